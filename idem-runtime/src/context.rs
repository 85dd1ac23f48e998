//! Which store and settings a call runs with: the idem given to [`init`] or [`install`], the
//! innermost [`Idem::scope`] or [`with_store`], and otherwise none: a call with nothing
//! installed is refused, never served by a store of this process alone.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cache::LocalCache;
use crate::config::{Config, FailMode};
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::record_key::RecordKey;
use crate::store::{Claim, Fence, Record, Store, StoreFuture, StoreHandle};

/// The settings of a configured idem that are not the store itself.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) prefix: String,
    pub(crate) fail_mode: FailMode,
    pub(crate) hash_keys: bool,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) wait: Duration,
    pub(crate) abandoned: Option<crate::Abandoned>,
    /// Whether store operations are timed into `idem_store_seconds`.
    pub(crate) store_latency: bool,
}

impl Settings {
    fn of(config: &Config) -> Self {
        Settings {
            prefix: config.prefix.clone(),
            fail_mode: config.fail_mode,
            hash_keys: config.hash_keys,
            ttl: config.ttl,
            lease: config.lease,
            wait: config.wait,
            abandoned: config.abandoned,
            store_latency: config.store_latency,
        }
    }
}

/// A configured idem: a store and the settings calls run with.
///
/// [`init`] makes one the process-wide default; [`Idem::scope`] runs a future with another
/// one (tests, multi-tenant services). Cloning it is cheap.
#[derive(Debug, Clone)]
pub struct Idem {
    pub(crate) store: StoreHandle,
    pub(crate) settings: Arc<Settings>,
    /// The local cache in front of `store` (`Config::local_cache`), if it is on.
    pub(crate) local: Option<LocalCache>,
}

tokio::task_local! {
    static SCOPED: Idem;
}

static GLOBAL: OnceLock<Idem> = OnceLock::new();
/// The settings of calls that name their own store while nothing is installed.
static UNCONFIGURED: OnceLock<Idem> = OnceLock::new();

/// What a call made with nothing installed gets, naming the ways to install something.
pub(crate) fn not_configured() -> Error {
    Error::Config(
        "no idem store is installed for this process: call idem::init(Config) (the store \
         IDEM_STORE names; `memory` for one process) or idem::install(Idem) (a store built from \
         the application's own clients) once at start-up, or run the call inside \
         Idem::scope / idem::with_store"
            .to_owned(),
    )
}

impl Idem {
    /// Builds the store named by `config` (the constructor of its URL's scheme: built in, or
    /// registered with [`register_scheme`](crate::store::registry::register_scheme)) and
    /// checks that it answers.
    ///
    /// Fails with [`Error::Config`] for an invalid configuration, or with [`Error::Connect`] when
    /// the store cannot be reached within the connect timeout.
    pub async fn connect(config: &Config) -> Result<Idem, Error> {
        // The registry's row for the store's scheme: its constructor builds the backend's
        // options from `config`.
        let connector = config.checked()?;
        let store = connector.connect(config).await?;
        Ok(Idem::with_settings(store, config))
    }

    /// An idem over an existing `store`, with the other settings of `config` (and a local
    /// cache of its own in front of `store` when `config.local_cache` is not 0).
    pub fn with_settings(store: impl Into<StoreHandle>, config: &Config) -> Idem {
        Idem {
            store: store.into(),
            settings: Arc::new(Settings::of(config)),
            local: (config.local_cache > 0).then(|| LocalCache::new(config.local_cache)),
        }
    }

    /// The store calls run on.
    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    /// The store key under which the call of `scope` with `key` (the key as
    /// [`Call::new`](crate::Call::new) takes it) keeps its record: this idem's prefix, the
    /// scope and the key, encoded and hashed as every call does (see the README's "Store
    /// keys"). For operators, to find a record with the store's own tools.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let idem = idem::Idem::with_settings(idem::MemoryStore::new(), &idem::Config::default());
    /// assert_eq!(idem.store_key("billing::invoice", "inv-42"), "idem:billing.invoice:inv-42");
    /// assert_eq!(idem.store_key("billing::invoice", "a:b"), r"idem:billing.invoice:a\:b");
    /// ```
    pub fn store_key(&self, scope: &str, key: impl Display) -> String {
        let settings = &self.settings;
        crate::key::store_key(
            &settings.prefix,
            scope,
            &crate::key::one_part(key.to_string()),
            settings.hash_keys,
        )
    }

    /// The store key of the record `key` of `scope` (see [`RecordKey`]): the store key of a
    /// single key, a tuple key, an HTTP request's principal and key, encoded and hashed as
    /// calls do; or a store key given as it is (then `scope` is not used).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use idem::RecordKey;
    ///
    /// let idem = idem::Idem::with_settings(idem::MemoryStore::new(), &idem::Config::default());
    /// assert_eq!(idem.store_key_of("shop", &RecordKey::parts(["acme", "7"])), "idem:shop:acme:7");
    /// assert_eq!(idem.store_key_of("shop", &RecordKey::one("acme:7")), r"idem:shop:acme\:7");
    /// ```
    pub fn store_key_of(&self, scope: &str, key: &RecordKey) -> String {
        key.store_key(&self.settings.prefix, scope, self.settings.hash_keys)
    }

    /// The start shared by the store keys of every call of this idem (its prefix, encoded,
    /// and `:`), such as `idem:`: what [`stats`](crate::stats) counts under.
    pub fn key_prefix(&self) -> String {
        crate::key::key_prefix(&self.settings.prefix)
    }

    /// Runs `future` with this idem instead of the process-wide one. Calls made by the future
    /// itself use it; tasks it spawns do not (they fall back to the process-wide one: scope
    /// them too). The returned future owns a clone of this idem, so it can be spawned:
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tenant = idem::Idem::connect(&idem::Config::default().prefix("tenant-a")).await?;
    /// let task = tokio::spawn(tenant.scope(async {
    ///     idem::Call::new("report", "2026-11").run(async { 42 }).await
    /// }));
    /// assert_eq!(task.await??.value, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn scope<F: Future>(&self, future: F) -> impl Future<Output = F::Output> + use<F> {
        SCOPED.scope(self.clone(), future)
    }

    /// The idem a call made here would use: the innermost [`scope`](Idem::scope), else the one
    /// given to [`init`] or [`install`].
    ///
    /// Fails with [`Error::Config`] when there is none: nothing was installed, and this is not
    /// inside a scope.
    pub fn current() -> Result<Idem, Error> {
        Idem::with_current(Idem::clone)
    }

    /// Runs `f` with a reference to the idem a call made here would use (see
    /// [`current`](Idem::current)), without cloning it; [`Error::Config`] when there is none.
    pub(crate) fn with_current<R>(f: impl FnOnce(&Idem) -> R) -> Result<R, Error> {
        let mut f = Some(f);
        if let Ok(Some(done)) = SCOPED.try_with(|idem| f.take().map(|f| f(idem))) {
            return Ok(done);
        }
        let f = f.take().expect("not called: no scoped idem");
        GLOBAL.get().map(f).ok_or_else(not_configured)
    }

    /// Like [`with_current`](Idem::with_current), for a call that names its own store (`store =`,
    /// [`with_store`], the transactional mode's connection): with nothing installed, `f` gets
    /// the default settings and a store that refuses every operation, so nothing runs on a
    /// store the call did not name.
    pub(crate) fn with_current_or_unconfigured<R>(f: impl FnOnce(&Idem) -> R) -> R {
        let mut f = Some(f);
        if let Ok(Some(done)) = SCOPED.try_with(|idem| f.take().map(|f| f(idem))) {
            return done;
        }
        let f = f.take().expect("not called: no scoped idem");
        f(GLOBAL.get().unwrap_or_else(|| {
            UNCONFIGURED.get_or_init(|| Idem::with_settings(NotInstalled, &Config::default()))
        }))
    }
}

/// The store of the idem a call gets when nothing is installed and it names a store of its own:
/// never used by such a call, and refusing every operation, so that a path that would reach it
/// fails with the reason instead of keeping records nowhere.
struct NotInstalled;

fn refused<T: Send + 'static>() -> StoreFuture<'static, T> {
    Box::pin(std::future::ready(Err(StoreError::new(
        StoreErrorKind::Other,
        not_configured().to_string(),
    ))))
}

impl Store for NotInstalled {
    async fn claim(&self, _: &str, _: &Claim, _: Duration) -> Result<Option<Record>, StoreError> {
        refused().await
    }
    async fn complete(
        &self,
        _: &str,
        _: &Claim,
        _: &[u8],
        _: Duration,
    ) -> Result<Fence, StoreError> {
        refused().await
    }
    async fn release(&self, _: &str, _: &Claim) -> Result<Fence, StoreError> {
        refused().await
    }
    async fn renew(&self, _: &str, _: &Claim, _: Duration) -> Result<Fence, StoreError> {
        refused().await
    }
    async fn wait(&self, _: &str, _: &Claim, _: Duration) -> Result<(), StoreError> {
        refused().await
    }
    fn describe(&self) -> String {
        "none installed".to_owned()
    }
}

/// Configures idem for the whole process: call it once at start-up, before the first
/// idempotent call.
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// idem::init(idem::Config::from_env()?).await?;
/// # Ok(())
/// # }
/// ```
///
/// `Config::default()` (and `IDEM_STORE=memory`) is the in-memory store: calls are idempotent
/// within this process only, which is right for one process and wrong for replicas that share
/// work. To use a store built from the application's own clients, see [`install`].
///
/// Fails with [`Error::Config`] for an invalid configuration, [`Error::Connect`] when the store
/// does not answer, and [`Error::AlreadyInitialized`] when an idem is already installed. Until
/// `init` or [`install`] has run, a call outside [`Idem::scope`] and [`with_store`] fails with
/// [`Error::Config`]: nothing falls back to a store of this process alone.
pub async fn init(config: Config) -> Result<(), Error> {
    // Checked before connecting: a second `init` must not open connections it then drops.
    if GLOBAL.get().is_some() {
        return Err(Error::AlreadyInitialized);
    }
    install(Idem::connect(&config).await?)
}

/// Installs a ready `idem` for the whole process: what [`init`] does with the idem it connects,
/// for a store the application built itself (`RedisStore::from_deadpool`,
/// `RedisStore::from_client`, `PostgresStore::from_pool`, a store of its own). Every call of
/// the process then runs on it, in every task, outside [`Idem::scope`] and [`with_store`].
///
/// ```
/// # use idem_runtime as idem;
/// # fn main() -> Result<(), idem::Error> {
/// let store = idem::MemoryStore::new(); // or RedisStore::from_deadpool(pool), …
/// idem::install(idem::Idem::with_settings(store, &idem::Config::default()))?;
/// assert!(matches!(idem::install(idem::Idem::current()?), Err(idem::Error::AlreadyInitialized)));
/// # Ok(())
/// # }
/// ```
///
/// Fails with [`Error::AlreadyInitialized`] when an idem is already installed (by `init` or
/// `install`); the one installed stays.
pub fn install(idem: Idem) -> Result<(), Error> {
    GLOBAL.set(idem).map_err(|_| Error::AlreadyInitialized)
}

/// Runs `future` with `store` instead of the configured one (the other settings stay those of
/// [`Idem::current`], or the defaults of [`Config`] when nothing is installed; the local cache,
/// which belongs to the configured store, is not used).
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let store = idem::MemoryStore::new();
/// let outcome = idem::with_store(store, idem::Call::new("doc", "k").run(async { 1 })).await?;
/// assert_eq!(outcome.value, 1);
/// # Ok(())
/// # }
/// ```
pub fn with_store<F: Future>(
    store: impl Into<StoreHandle>,
    future: F,
) -> impl Future<Output = F::Output> {
    let settings = Idem::with_current_or_unconfigured(|current| current.settings.clone());
    let scoped = Idem {
        store: store.into(),
        settings,
        local: None,
    };
    SCOPED.scope(scoped, future)
}
