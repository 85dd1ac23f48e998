//! [`Call`]: one idempotent call, built by the attribute or by hand.

use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{CachingShape, PlainShape, ResultShape};
use crate::engine::{self, Request};
use crate::error::Error;
use crate::outcome::Outcome;
use crate::record::Fingerprint;
use crate::store::StoreHandle;

/// One idempotent call: its scope and key, and the options of the `#[idempotent]` attribute.
///
/// This is the non-macro entry point, for code that cannot use the attribute (closures, code
/// generated elsewhere, keys known only inside a loop). Options left unset take the defaults
/// of the [`Config`](crate::Config) given to [`init`](crate::init).
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// use std::time::Duration;
///
/// let first = idem::Call::new("billing::invoice", "inv-42")
///     .ttl(Duration::from_secs(3600))
///     .run(async { 42_u64 })
///     .await?;
/// assert_eq!(first.value, 42);
/// assert!(!first.replayed());
///
/// // The same key again: the body does not run, the stored value comes back.
/// let again = idem::Call::new("billing::invoice", "inv-42")
///     .run::<u64, _>(async { unreachable!("the first result is replayed") })
///     .await?;
/// assert_eq!(again.value, 42);
/// assert!(again.replayed());
/// # Ok(())
/// # }
/// ```
#[must_use = "a Call does nothing until one of its run methods is awaited"]
#[derive(Debug)]
pub struct Call(Request);

impl Call {
    /// A call of `scope` (the namespace, such as the function's path) with `key`.
    ///
    /// The key is one part: `Call::new("s", "a:b")` and a call keyed by the parts `("a", "b")`
    /// (see [`Call::with_parts`]) are different keys.
    pub fn new(scope: impl Into<Cow<'static, str>>, key: impl Display) -> Self {
        Call::keyed(scope.into(), crate::key::one_part(key.to_string()))
    }

    /// A call of `scope` whose key is made of several parts, like the tuple `key = (a, b)` of
    /// the attribute: two calls share a key only when they have the same parts.
    pub fn with_parts<K: Display>(
        scope: impl Into<Cow<'static, str>>,
        parts: impl IntoIterator<Item = K>,
    ) -> Self {
        let mut key = crate::key::Parts::default();
        for part in parts {
            key.push(&part.to_string());
        }
        Call::keyed(scope.into(), key.finish())
    }

    /// A call whose key is encoded already (see `key.rs`).
    pub(crate) fn keyed(scope: Cow<'static, str>, key: String) -> Self {
        Call(Request {
            scope,
            key,
            ttl: None,
            lease: None,
            wait: None,
            fingerprint: None,
            store: None,
            heartbeat: true,
        })
    }

    /// How long a completed result is kept and replayed.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.0.ttl = Some(ttl);
        self
    }

    /// How long the claim lives without renewal; renewed every `lease / 3` while the body runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.0.lease = Some(lease);
        self
    }

    /// How long a duplicate waits for the in-flight call; zero rejects it at once with
    /// [`Error::InProgress`].
    pub fn wait(mut self, wait: Duration) -> Self {
        self.0.wait = Some(wait);
        self
    }

    /// The request this key stands for: stored as a hash, so that the same key with another
    /// request is [`Error::KeyMismatch`] instead of a wrong replay.
    pub fn fingerprint<T: Serialize + ?Sized>(mut self, request: &T) -> Self {
        self.0.fingerprint = Some(Fingerprint::of(request).map_err(|e| e.to_string()));
        self
    }

    /// Runs this call on `store` instead of the configured one.
    pub fn store(mut self, store: impl Into<StoreHandle>) -> Self {
        self.0.store = Some(store.into());
        self
    }

    /// Turns the lease renewal off (on by default). Without it a body that runs longer than
    /// its lease loses its claim: for tests of lease expiry, rarely anything else.
    pub fn heartbeat(mut self, on: bool) -> Self {
        self.0.heartbeat = on;
        self
    }

    /// Runs `body` once for this key and stores its value; replays the stored value to every
    /// later or concurrent call.
    pub fn run<T, F>(self, body: F) -> impl Future<Output = Result<Outcome<T>, Error>>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = T>,
    {
        // The engine's future itself, not one wrapped around it: a call's future is moved
        // whole on every call, and each layer adds to what is copied.
        engine::execute(self.0, body, PlainShape::new())
    }

    /// Runs a fallible `body`: an `Ok` value is stored and replayed, an `Err` is returned and
    /// releases the key, so that a retry runs the body again.
    pub fn run_result<T, E, F>(
        self,
        body: F,
    ) -> impl Future<Output = Result<Outcome<Result<T, E>>, Error>>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        engine::execute(self.0, body, ResultShape::new())
    }

    /// Like [`run_result`](Call::run_result), but the errors for which `cache_err` returns
    /// true are permanent: stored and replayed like a value.
    pub fn run_result_caching<T, E, F, P>(
        self,
        cache_err: P,
        body: F,
    ) -> impl Future<Output = Result<Outcome<Result<T, E>>, Error>>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
        P: FnOnce(&E) -> bool,
    {
        engine::execute(self.0, body, CachingShape::new(cache_err))
    }
}
