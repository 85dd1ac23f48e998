//! The store registry: which constructor the scheme of a store URL (`IDEM_STORE`,
//! [`Config::store`](crate::Config#structfield.store)) names.
//!
//! The built-in schemes are the rows of one table (`memory`, `redis://`, `postgres://`…); a
//! store of another crate gets a row of its own with [`register_scheme`], and is then chosen by
//! `IDEM_STORE=myscheme://…` like a built-in one. The scheme is read here and nowhere else:
//! [`Config::validate`](crate::Config::validate) asks for the row of the URL's scheme and
//! [`Idem::connect`](crate::Idem::connect) runs its constructor, which builds the backend's
//! options from the `Config` in the backend's own folder (`RedisStore::connect`,
//! `PostgresStore::connect`, `MySqlStore::connect`, `MemoryStore::connect`). A built-in scheme whose feature is off
//! keeps its row: its constructor fails with [`Error::Config`] naming the feature to add.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use crate::config::Config;
use crate::error::Error;
use crate::store::StoreHandle;
use crate::store::memory::MemoryStore;

/// What a store constructor returns: the store named by a [`Config`], connected and checked.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = Result<StoreHandle, Error>> + Send + 'a>>;

/// The constructor of a built-in scheme.
type BuiltIn = fn(&Config) -> ConnectFuture<'_>;

/// The constructor of a registered scheme.
type Registered = Arc<dyn for<'a> Fn(&'a Config) -> ConnectFuture<'a> + Send + Sync>;

/// The built-in schemes, a row each: the scheme and the constructor of its store.
const BUILT_IN: &[(&str, BuiltIn)] = &[
    ("memory", memory),
    ("redis", redis),
    ("rediss", redis),
    ("redis+unix", redis),
    ("unix", redis),
    ("redis+cluster", redis),
    ("rediss+cluster", redis),
    ("postgres", postgres),
    ("postgresql", postgres),
    ("sqlite", sqlite),
    ("mysql", mysql),
    ("mariadb", mysql),
];

/// The forms of the built-in store URLs, for the error of an unknown scheme.
const FORMS: &str = "`memory`, `redis://host:6379/0`, `rediss://host:6380/0`, `redis+cluster://host1:port1,host2:port2`, `postgres://user:password@host:5432/db`, `sqlite://path/to/idem.db`, `mysql://user:password@host:3306/db`";

/// The schemes registered by [`register_scheme`], in the order they were.
static REGISTERED: RwLock<Vec<(String, Registered)>> = RwLock::new(Vec::new());

/// The constructor of a store URL's scheme: a row of the registry.
#[derive(Clone)]
pub(crate) enum Connector {
    BuiltIn(BuiltIn),
    Registered(Registered),
}

impl Connector {
    /// Builds the store `config` names, and checks that it answers.
    pub(crate) fn connect<'a>(&self, config: &'a Config) -> ConnectFuture<'a> {
        match self {
            Connector::BuiltIn(connect) => connect(config),
            Connector::Registered(connect) => connect(config),
        }
    }
}

/// The scheme of a store URL: what comes before `://`, or all of it (`memory`).
fn scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(scheme, _)| scheme)
}

fn registered() -> RwLockReadGuard<'static, Vec<(String, Registered)>> {
    // A registration that panicked left the list as it was: still usable.
    REGISTERED.read().unwrap_or_else(PoisonError::into_inner)
}

/// The row of `url`'s scheme, if it is built in or registered.
pub(crate) fn find(url: &str) -> Option<Connector> {
    let scheme = scheme(url);
    if let Some((_, connect)) = BUILT_IN.iter().find(|(name, _)| *name == scheme) {
        return Some(Connector::BuiltIn(*connect));
    }
    registered()
        .iter()
        .find(|(name, _)| name == scheme)
        .map(|(_, connect)| Connector::Registered(connect.clone()))
}

/// What a store URL may be: the built-in forms, and the registered schemes.
pub(crate) fn expected() -> String {
    let registered: Vec<String> = registered()
        .iter()
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    let registered = if registered.is_empty() {
        "none".to_owned()
    } else {
        registered.join(", ")
    };
    format!(
        "{FORMS}, or a scheme registered with idem::store::registry::register_scheme \
         (registered: {registered})"
    )
}

/// Registers `connect` as the constructor of the stores whose URL has the scheme `scheme`, so
/// that `IDEM_STORE=scheme://…` (or [`Config::store`](crate::Config::store)) chooses a store
/// defined outside idem: [`Config::validate`](crate::Config::validate) accepts the scheme and
/// [`init`](crate::init) / [`Idem::connect`](crate::Idem::connect) call `connect` with the
/// `Config`, whose `store` is the whole URL. Register before reading the configuration
/// ([`Config::from_env`](crate::Config::from_env) checks the scheme); a registration lasts as
/// long as the process.
///
/// ```
/// # use idem_runtime as idem;
/// use idem::store::registry::{ConnectFuture, register_scheme};
/// use idem::{Config, MemoryStore, StoreHandle};
///
/// /// The constructor: here a memory store, where an application would connect its own.
/// fn connect(config: &Config) -> ConnectFuture<'_> {
///     Box::pin(async move {
///         let capacity = config.store.trim_start_matches("scratch://").parse().unwrap_or(10);
///         Ok(StoreHandle::new(MemoryStore::with_capacity(capacity)))
///     })
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// register_scheme("scratch", connect)?;
/// let config = Config::from_lookup(|name| (name == "IDEM_STORE").then(|| "scratch://64".into()))?;
/// let idem = idem::Idem::connect(&config).await?;
/// assert_eq!(idem.store().describe(), "memory");
/// # Ok(())
/// # }
/// ```
///
/// Fails with [`Error::Config`] for a scheme that is not one (a letter, then letters, digits,
/// `+`, `-` or `.`; no `://`), a built-in scheme (`memory`, `redis`, `postgres`…, feature on or
/// off), and a scheme already registered: a scheme names one store.
pub fn register_scheme<F>(scheme: &str, connect: F) -> Result<(), Error>
where
    F: for<'a> Fn(&'a Config) -> ConnectFuture<'a> + Send + Sync + 'static,
{
    let mut chars = scheme.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        return Err(Error::Config(format!(
            "`{}` is not a URL scheme to register; expected a letter, then letters, digits, \
             `+`, `-` or `.`, without `://` (such as `mystore`)",
            scheme.escape_debug()
        )));
    }
    if BUILT_IN.iter().any(|(name, _)| *name == scheme) {
        return Err(Error::Config(format!(
            "the store scheme `{scheme}` is built into idem and cannot be registered; register \
             the store under a scheme of its own"
        )));
    }
    let mut registered = REGISTERED.write().unwrap_or_else(PoisonError::into_inner);
    if registered.iter().any(|(name, _)| name == scheme) {
        return Err(Error::Config(format!(
            "the store scheme `{scheme}` is already registered; a scheme names one store"
        )));
    }
    registered.push((scheme.to_owned(), Arc::new(connect)));
    Ok(())
}

fn memory(config: &Config) -> ConnectFuture<'_> {
    Box::pin(async move { Ok(StoreHandle::new(MemoryStore::connect(config).await?)) })
}

#[cfg(feature = "redis")]
fn redis(config: &Config) -> ConnectFuture<'_> {
    use crate::store::redis::RedisStore;
    Box::pin(async move { Ok(StoreHandle::new(RedisStore::connect(config).await?)) })
}

#[cfg(not(feature = "redis"))]
fn redis(config: &Config) -> ConnectFuture<'_> {
    needs(config, "redis")
}

#[cfg(feature = "postgres")]
fn postgres(config: &Config) -> ConnectFuture<'_> {
    use crate::store::postgres::PostgresStore;
    Box::pin(async move { Ok(StoreHandle::new(PostgresStore::connect(config).await?)) })
}

#[cfg(not(feature = "postgres"))]
fn postgres(config: &Config) -> ConnectFuture<'_> {
    needs(config, "postgres")
}

#[cfg(feature = "sqlite")]
fn sqlite(config: &Config) -> ConnectFuture<'_> {
    use crate::store::sqlite::SqliteStore;
    Box::pin(async move { Ok(StoreHandle::new(SqliteStore::connect(config).await?)) })
}

#[cfg(not(feature = "sqlite"))]
fn sqlite(config: &Config) -> ConnectFuture<'_> {
    needs(config, "sqlite")
}

#[cfg(feature = "mysql")]
fn mysql(config: &Config) -> ConnectFuture<'_> {
    use crate::store::mysql::MySqlStore;
    Box::pin(async move { Ok(StoreHandle::new(MySqlStore::connect(config).await?)) })
}

#[cfg(not(feature = "mysql"))]
fn mysql(config: &Config) -> ConnectFuture<'_> {
    needs(config, "mysql")
}

/// The constructor of a built-in scheme whose `feature` is off: an error naming it.
#[cfg(not(all(
    feature = "redis",
    feature = "postgres",
    feature = "sqlite",
    feature = "mysql"
)))]
fn needs<'a>(config: &Config, feature: &str) -> ConnectFuture<'a> {
    Box::pin(std::future::ready(Err(Error::Config(format!(
        "store `{}` needs {}",
        config.store,
        crate::error::needs_feature(feature)
    )))))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn counted(config: &Config) -> ConnectFuture<'_> {
        memory(config)
    }

    fn config_error(result: Result<(), Error>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected Error::Config, got {other:?}"),
        }
    }

    #[test]
    fn built_in_and_malformed_schemes_are_refused_and_a_scheme_is_registered_once() {
        for scheme in [
            "memory",
            "redis",
            "rediss+cluster",
            "postgres",
            "postgresql",
            "sqlite",
            "mysql",
            "mariadb",
        ] {
            let message = config_error(register_scheme(scheme, counted));
            assert!(message.contains("is built into idem"), "{message}");
            assert!(message.contains(&format!("`{scheme}`")), "{message}");
        }
        for scheme in ["", "my://store", "9store", "my store", "mystore:", "ünï"] {
            let message = config_error(register_scheme(scheme, counted));
            assert!(message.contains("is not a URL scheme"), "{message}");
        }
        register_scheme("registry-test.once", counted).expect("a new scheme");
        let message = config_error(register_scheme("registry-test.once", counted));
        assert!(message.contains("already registered"), "{message}");
        assert!(matches!(
            find("registry-test.once://x"),
            Some(Connector::Registered(_))
        ));
    }

    #[test]
    fn an_unknown_scheme_names_the_forms_and_registration() {
        let error = Config::default()
            .store("mongodb://h/db")
            .validate()
            .unwrap_err();
        let message = error.to_string();
        for expected in [
            "store=`mongodb://h/db` is not valid",
            "redis+cluster://host1:port1,host2:port2",
            "postgres://user:password@host:5432/db",
            "or a scheme registered with idem::store::registry::register_scheme",
        ] {
            assert!(message.contains(expected), "{message}");
        }
        register_scheme("registry-test.listed", counted).unwrap();
        let message = Config::default()
            .store("nope://x")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(message.contains("`registry-test.listed`"), "{message}");
    }

    #[tokio::test]
    async fn a_registered_scheme_is_accepted_and_connected() {
        let config = Config::default().store("registry-test.connect://somewhere");
        assert!(config.validate().is_err(), "not registered yet");
        // A closure, which may hold what its stores share.
        let capacity = 7;
        register_scheme("registry-test.connect", move |config| {
            assert_eq!(config.store, "registry-test.connect://somewhere");
            Box::pin(async move { Ok(StoreHandle::new(MemoryStore::with_capacity(capacity))) })
        })
        .unwrap();
        config.validate().expect("registered");
        let idem = crate::context::Idem::connect(&config)
            .await
            .expect("connected");
        assert!(idem.store().downcast_ref::<MemoryStore>().is_some());
    }

    /// Every built-in row reaches its backend (here, a server that is not there), or names the
    /// feature its store needs.
    #[tokio::test]
    async fn each_built_in_scheme_reaches_its_store_or_names_its_feature() {
        for (url, feature, described) in [
            ("redis://127.0.0.1:1/0", "redis", "redis://"),
            ("rediss://127.0.0.1:1/0", "redis", "rediss://"),
            (
                "redis+unix:///nonexistent/idem.sock",
                "redis",
                "redis+unix://",
            ),
            ("unix:///nonexistent/idem.sock", "redis", "redis+unix://"),
            ("redis+cluster://127.0.0.1:1", "redis", "redis+cluster://"),
            ("rediss+cluster://127.0.0.1:1", "redis", "rediss+cluster://"),
            (
                "postgres://idem@127.0.0.1:1/idem",
                "postgres",
                "postgres://",
            ),
            (
                "postgresql://idem@127.0.0.1:1/idem",
                "postgres",
                "postgres://",
            ),
            ("mysql://idem@127.0.0.1:1/idem", "mysql", "mysql://"),
            ("mariadb://idem@127.0.0.1:1/idem", "mysql", "mysql://"),
        ] {
            let config = Config::default()
                .store(url)
                .connect_timeout(Duration::from_millis(300));
            let connector = find(url).unwrap_or_else(|| panic!("{url} has a row"));
            assert!(matches!(connector, Connector::BuiltIn(_)), "{url}");
            let error = match connector.connect(&config).await {
                Ok(store) => panic!("{url}: connected to {}", store.describe()),
                Err(error) => error,
            };
            let enabled = match feature {
                "redis" => cfg!(feature = "redis"),
                "mysql" => cfg!(feature = "mysql"),
                _ => cfg!(feature = "postgres"),
            };
            let message = error.to_string();
            if !enabled {
                let needs = format!(
                    "store `{url}` needs {}",
                    crate::error::needs_feature(feature)
                );
                assert!(
                    matches!(&error, Error::Config(text) if *text == needs),
                    "{error:?}"
                );
                continue;
            }
            // With the store's feature on, its own errors: the server, or a feature of its own.
            let other_feature = ["`redis-tls` feature", "`redis-cluster` feature"]
                .iter()
                .any(|named| message.contains(named));
            match error {
                Error::Connect { store, .. } => {
                    assert!(store.starts_with(described), "{url}: {store}")
                }
                _ => assert!(other_feature, "{url}: {message}"),
            }
        }
        // SQLite has no server: a file in a directory that does not exist.
        let url = "sqlite:///nonexistent-idem-dir/idem.db";
        let error = match find(url)
            .expect("sqlite has a row")
            .connect(&Config::default().store(url))
            .await
        {
            Ok(store) => panic!("{url}: opened {}", store.describe()),
            Err(error) => error,
        };
        match error {
            Error::Config(text) if cfg!(feature = "sqlite") => {
                assert!(text.contains("nonexistent-idem-dir"), "{text}")
            }
            Error::Config(text) => assert_eq!(
                text,
                format!(
                    "store `{url}` needs {}",
                    crate::error::needs_feature("sqlite")
                )
            ),
            other => panic!("{url}: {other:?}"),
        }
        let memory = find("memory")
            .unwrap()
            .connect(&Config::default())
            .await
            .unwrap();
        assert_eq!(memory.describe(), "memory");
    }
}
