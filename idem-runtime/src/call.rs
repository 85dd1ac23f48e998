//! [`Call`]: one idempotent call, built by the attribute or by hand.

use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{CachingCodec, PlainCodec, ResultCodec};
use crate::engine::{self, CallRequest};
use crate::error::Error;
use crate::outcome::Outcome;
use crate::record::Fingerprint;
use crate::store::StoreHandle;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
use crate::store::tx::TxConnection;

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
/// idem::init(idem::Config::default()).await?; // once at start-up
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
pub struct Call(CallRequest);

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
        Call(CallRequest {
            scope,
            key,
            ttl: None,
            lease: None,
            wait: None,
            fingerprint: None,
            store: None,
            heartbeat: true,
            step: false,
            abandoned: None,
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

    /// Makes this call's key a server-issued token of its scope (see
    /// [`tokens`](crate::tokens)): the returned call first redeems the key as a token of the
    /// scope, in one store operation, and then runs as this call. A valid token runs the body
    /// once; a token redeemed before (a double submission) replays the first call's result, or
    /// waits for it while it runs; a token never issued for this scope, or expired, fails with
    /// [`Error::UnknownToken`] before anything runs. The token is kept as redeemed for this
    /// call's ttl and lease (from its redemption), as long as its result is replayed.
    ///
    /// Issue the token in the same scope as the call: `tokens::issue("shop::checkout", ttl)`,
    /// then `Call::new("shop::checkout", &token).redeeming()`.
    pub fn redeeming(self) -> crate::tokens::TokenCall {
        crate::tokens::TokenCall::new(self)
    }

    /// The call's scope, encoded key, store, ttl and lease, for a call that redeems its key
    /// as a token first.
    pub(crate) fn request(&self) -> &CallRequest {
        &self.0
    }

    /// What this call does when it finds an abandoned attempt of its key, an earlier one that
    /// began and never ended: run the body again as the next attempt, or fail with
    /// [`Error::Abandoned`] until an operator decides (see [`Abandoned`](crate::Abandoned)).
    /// Either marks each attempt in the store (one more round trip when the body runs) and
    /// tells the body its number ([`CallContext::attempt`](crate::CallContext::attempt)).
    /// Without it, the configured policy ([`Config::abandoned`](crate::Config::abandoned));
    /// without one, the body runs again unmarked.
    pub fn abandoned(mut self, policy: crate::Abandoned) -> Self {
        self.0.abandoned = Some(policy);
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
        engine::execute(self.0, body, PlainCodec::new(), |result, _| result)
    }

    /// [`run`](Call::run), giving the value alone (the attribute's runner of a plain function).
    pub(crate) fn run_value<T, F>(self, body: F) -> impl Future<Output = Result<T, Error>>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = T>,
    {
        engine::execute(self.0, body, PlainCodec::new(), |result, _| {
            result.map(|outcome| outcome.value)
        })
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
        engine::execute(self.0, body, ResultCodec::new(), |result, _| result)
    }

    /// [`run_result`](Call::run_result), handing how it ended to `answer` with the call's
    /// frame, when it got one: the HTTP layer reads the store and lease of a rejected call
    /// there instead of resolving them again.
    #[cfg(feature = "http")]
    pub(crate) fn run_result_framed<T, E, F, O>(
        self,
        body: F,
        answer: impl FnOnce(Result<Outcome<Result<T, E>>, Error>, Option<&engine::Frame<'_>>) -> O,
    ) -> impl Future<Output = O>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        engine::execute(self.0, body, ResultCodec::new(), answer)
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
        engine::execute(self.0, body, CachingCodec::new(cache_err), |result, _| {
            result
        })
    }

    /// Runs `body` once for this key in **transactional mode**: the claim and the stored value
    /// are written through `conn`, inside its transaction, so that they commit or roll back
    /// together with every write `body` makes through the connection it is given (the same
    /// connection). A connection outside any transaction gets one of its own for the call
    /// (`BEGIN` … `COMMIT`). The caller commits its own transaction as usual.
    ///
    /// A concurrent duplicate in another transaction waits on PostgreSQL's lock on the key
    /// (at most [`wait`](Call::wait), then [`Error::InProgress`], after which PostgreSQL has
    /// aborted its transaction: roll it back and retry), then replays the value once the first
    /// transaction commits, or runs the body once it rolls back. A duplicate through the plain
    /// [`PostgresStore`](crate::PostgresStore) waits on the same lock, as long as its own
    /// `wait`, then replays or gets [`Error::InProgress`] (never `Error::Store`, never a
    /// fail-open run). No lease is renewed: nothing depends on time. The record lives in the
    /// table of the configured [`PostgresStore`](crate::PostgresStore) (or of
    /// [`store`](Call::store)), else in the default `public.idem_records`, which must exist:
    /// before its first claim through a table, a process looks for it without touching it, and
    /// a missing table is [`Error::Config`] with the SQL to run, the caller's transaction still
    /// usable (run [`MIGRATION`](crate::postgres::MIGRATION) with `sqlx::raw_sql`, even in
    /// that transaction, and call again). [`inspect`](crate::inspect) and
    /// [`forget`](crate::forget) through a store that does not read that table fail with
    /// [`Error::Config`] naming it.
    ///
    /// Under `REPEATABLE READ` or `SERIALIZABLE`, a concurrent duplicate fails with
    /// [`Error::Conflict`]: roll back and retry the whole transaction.
    ///
    /// `conn` is a `&mut` of any [`TxConnection`]: a connection, a `sqlx::Transaction` or a
    /// pool connection, and the body receives the connection itself. **On SQLite** (feature
    /// `sqlite`, a `SqliteConnection`), the record is a row of the table of the configured
    /// [`SqliteStore`](crate::SqliteStore), else `idem_records`, in the connection's file; a
    /// connection outside any transaction gets `BEGIN IMMEDIATE`, so that a duplicate waits for
    /// the first transaction (up to the connection's `busy_timeout`) and replays it; in the
    /// caller's transaction, a snapshot older than another connection's write, or a lock held
    /// past `busy_timeout`, is [`Error::Conflict`] (begin with `BEGIN IMMEDIATE` to never meet
    /// the first); a key held by a plain call (a lease) is [`Error::InProgress`] at once, since
    /// that holder needs the write lock this transaction holds.
    ///
    /// **On MySQL/MariaDB** (feature `mysql`, a `MySqlConnection`), the record is a row of the
    /// table of the configured [`MySqlStore`](crate::MySqlStore), else `idem_records`, in the
    /// connection's database. The claim is an `INSERT` that waits on a concurrent transaction's
    /// row lock for [`wait`](Call::wait) rounded down to whole seconds
    /// (`innodb_lock_wait_timeout`), then [`Error::InProgress`] with only that statement rolled
    /// back (the caller's transaction goes on); the record it meets is read with a locking
    /// read, never the REPEATABLE READ snapshot. A deadlock is [`Error::Conflict`], after which
    /// InnoDB has rolled the whole transaction back: roll back and retry. A key held by a plain
    /// call (a lease) is [`Error::InProgress`] at once, since that holder needs the row lock
    /// this transaction's claim took.
    ///
    /// **On tokio-postgres** (feature `tokio-postgres`), `conn` is a `tokio_postgres::Client`
    /// (outside a transaction: idem begins one for the call) or a
    /// `tokio_postgres::Transaction<'_>` (a savepoint in it), and with `deadpool-postgres`, a
    /// pool's `Object` or `Transaction` (the body receives the client or transaction inside),
    /// on which idem's statements are prepared once per connection in the pool's statement
    /// cache (unless the store is [`PostgresOptions::pooler`](crate::PostgresOptions::pooler)).
    /// The records are [`PostgresStore`](crate::PostgresStore)'s rows, shared with calls
    /// through sqlx. A call on a `Transaction` is not `Send` (see the README).
    ///
    /// ```no_run
    /// # use idem_runtime as idem;
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut transaction = pool.begin().await?;
    /// let outcome = idem::Call::new("ledger::transfer", "t-42")
    ///     .run_tx(&mut transaction, async |conn: &mut sqlx::PgConnection| {
    ///         sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
    ///             .execute(&mut *conn)
    ///             .await
    ///             .map(|done| done.rows_affected())
    ///             .unwrap_or(0)
    ///     })
    ///     .await?;
    /// transaction.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql")))
    )]
    pub async fn run_tx<A, T, B>(self, conn: &mut A, body: B) -> Result<Outcome<T>, Error>
    where
        A: TxConnection + ?Sized,
        T: Serialize + DeserializeOwned,
        B: AsyncFnOnce(&mut A::Conn) -> T,
    {
        engine::tx::execute_on(self.0, conn, body, PlainCodec::new()).await
    }

    /// [`run_tx`](Call::run_tx) for a fallible `body`: an `Ok` value is stored with the body's
    /// writes; an `Err` leaves no trace: the body's writes and the claim are rolled back to a
    /// savepoint taken after the claim, and the caller's transaction stays usable.
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql")))
    )]
    pub async fn run_result_tx<A, T, E, B>(
        self,
        conn: &mut A,
        body: B,
    ) -> Result<Outcome<Result<T, E>>, Error>
    where
        A: TxConnection + ?Sized,
        T: Serialize + DeserializeOwned,
        B: AsyncFnOnce(&mut A::Conn) -> Result<T, E>,
    {
        engine::tx::execute_on(self.0, conn, body, ResultCodec::new()).await
    }

    /// [`run_tx`](Call::run_tx) for a fallible `body` whose errors for which `cache_err`
    /// returns true are permanent: stored and replayed like a value, **with the body's
    /// writes kept** (they commit with the caller's transaction). Other errors leave no trace,
    /// as with [`run_result_tx`](Call::run_result_tx).
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql")))
    )]
    pub async fn run_result_caching_tx<A, T, E, B, P>(
        self,
        conn: &mut A,
        cache_err: P,
        body: B,
    ) -> Result<Outcome<Result<T, E>>, Error>
    where
        A: TxConnection + ?Sized,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        B: AsyncFnOnce(&mut A::Conn) -> Result<T, E>,
        P: FnOnce(&E) -> bool,
    {
        let codec = CachingCodec::new(cache_err);
        engine::tx::execute_on(self.0, conn, body, codec).await
    }

    /// [`run_result_caching_tx`](Call::run_result_caching_tx) with every error permanent:
    /// no savepoint is needed, since nothing is ever undone.
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    pub(crate) async fn run_result_storing_errors_tx<A, T, E, B>(
        self,
        conn: &mut A,
        body: B,
    ) -> Result<Outcome<Result<T, E>>, Error>
    where
        A: TxConnection + ?Sized,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        B: AsyncFnOnce(&mut A::Conn) -> Result<T, E>,
    {
        let every = CachingCodec::every(|_: &E| true);
        engine::tx::execute_on(self.0, conn, body, every).await
    }
}
