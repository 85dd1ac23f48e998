//! [`MySqlStore`]: the store shared by processes and machines, on MySQL or MariaDB (InnoDB).
//!
//! One row per key in a table whose SQL is public ([`MIGRATION`], see `table.rs`); every
//! operation is one or two statements, each in its own implicit transaction (autocommit, see
//! `sql.rs`): a replay costs one statement, a first call three (read, insert, complete); while
//! first calls clearly outnumber the rest, a claim inserts first (`order.rs`): a first call
//! two, a replay two (the insert, then the read).
//! Expiry is decided by the server's clock. MySQL has no notifications: waiters are woken by
//! this store's own completions and look again every `poll_interval` for a holder elsewhere
//! (see `waiters.rs`); expired rows are deleted in the background in bounded batches (see
//! `reaper.rs`).
//!
//! A key claimed inside a caller's transaction that has not committed (the transactional
//! mode, `tx.rs`) is invisible to a plain read, but its row is locked: the claim's insert waits
//! on that lock not at all on MariaDB (`innodb_lock_wait_timeout` = 0 for that statement; 1 s
//! on MySQL, its shortest), reports the key in progress, and [`Store::wait`] waits on the lock
//! itself, bounded by the call's `wait` in whole seconds (the fraction left by polling every
//! `poll_interval`). A lock wait is never a store failure: it is
//! neither `Error::Store` nor a reason to run the body unprotected.
//!
//! The other files, one concern each: `options.rs` ([`MySqlOptions`]), `connect.rs` (the URL
//! and the pool the store opens), `failure.rs` (the server's error numbers as store errors),
//! `tokens.rs` (server-issued tokens, in a table of their own), `order.rs` (whether a claim
//! reads or inserts first).

mod connect;
mod failure;
mod options;
mod reaper;
mod sql;
mod table;
mod tokens;
pub(crate) mod tx;
mod waiters;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::MySql;
use sqlx::MySqlPool;
use sqlx::pool::PoolConnection;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::record::{Claim, Record, Token};
use crate::store::{Fence, Inspection, Issue, Redemption, Stats, Store, TokenKey};

pub use self::options::MySqlOptions;
pub use self::table::MIGRATION;
pub use self::tokens::TOKENS_MIGRATION;
pub use crate::store::ClaimOrder;

use self::reaper::Reaper;
use self::sql::Statements;
use self::table::Table;
use self::tokens::TokenStatements;
use self::waiters::Waiters;
use crate::store::order::{First, Order, Start};

/// How long after the holder's lease ends a waiter looks again, for the row to have expired.
const LEASE_GRACE: Duration = Duration::from_millis(2);

/// How often a claim reads and tries again when a concurrent claim takes the key between its
/// read and its insert and then frees it at once.
const CLAIM_TRIES: u32 = 8;

/// The holder [`MySqlStore::claim`] reports for a key held by a claim it cannot see: its row
/// is locked by a transaction that has not ended.
const UNSEEN_HOLDER: Token = Token::UNSEEN;

/// How long (seconds) a claim's insert waits on a row lock before it reports the key held by a
/// claim it cannot see: not at all on MariaDB, 1 s on MySQL (its shortest). A concurrent plain
/// claim that holds the lock for its one statement is then waited for as such a holder is (on
/// the lock, a moment), and the claim looks again.
const CLAIM_LOCK_WAIT: u64 = 0;

/// A [`Store`] on MySQL or MariaDB (InnoDB): exactly-once across every process and machine
/// that shares the database.
///
/// ```no_run
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let store = idem::MySqlStore::open("mysql://app:secret@127.0.0.1:3306/app").await?;
/// let outcome = idem::Call::new("billing::invoice", "inv-42")
///     .store(store.clone())
///     .run(async { 42_u64 })
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// Build it from a [`Config`] ([`connect`](MySqlStore::connect), or let [`init`](crate::init) do
/// it for `IDEM_STORE=mysql://…` or `mariadb://…`), from a URL and [`MySqlOptions`]
/// ([`connect_with`](MySqlStore::connect_with), [`open`](MySqlStore::open)), or from a pool the
/// application already has ([`from_pool`](MySqlStore::from_pool)). The URL names the database
/// the table lives in.
///
/// Records are rows of one table (by default `idem_records`, created by `connect` when
/// missing): `key` (bytes, compared as bytes), `state` (`in_progress` or `completed`), the
/// claim's `token`, the request's `fingerprint`, the `payload` (the JSON envelope of the
/// result) and `expires_at` (milliseconds since the Unix epoch). A row past `expires_at` is
/// absent to every operation, by the server's clock; a background reaper deletes such rows in
/// batches.
///
/// **Duplicates.** A call that finds the key held waits for the holder up to its `wait`, then
/// replays the result (or runs, if the holder released the key or its lease ended), or fails
/// with [`Error::InProgress`]; it holds no lock while it waits. A holder of this store wakes
/// its waiters when it ends; a holder in another process is seen by waiters that look again
/// every [`poll_interval`](MySqlOptions::poll_interval).
///
/// **Locks.** A key whose row a caller's transaction holds (the transactional mode, `tx =
/// conn`, before it commits) is in progress: the claim does not wait on the row lock (MySQL:
/// 1 s, its shortest lock wait), the call waits on the lock itself within its `wait` (whole
/// seconds; the fraction of a second left is waited by polling), then replays, runs, or fails
/// with [`Error::InProgress`]; never
/// [`Error::Store`], so `fail_mode = open` never runs a second execution through it.
///
/// Cloning it is cheap and shares the connections.
#[derive(Clone)]
pub struct MySqlStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: MySqlPool,
    sql: Arc<Statements>,
    /// The server-issued tokens' table and statements (`tokens.rs`).
    tokens: TokenStatements,
    /// The table, for the transactional mode and messages.
    table: Table,
    waiters: Waiters,
    _reaper: Reaper,
    describe: String,
    statement_timeout: Duration,
    poll_interval: Duration,
    /// Whether a claim reads or inserts first (`order.rs`).
    order: Order,
}

/// Runs `$op`, an expression of `$conn: &mut MySqlConnection`, on a connection of the store's
/// pool within the statement timeout; a connection that timed out or broke is not reused.
macro_rules! on_connection {
    ($store:expr, |$conn:ident| $op:expr) => {{
        let store: &MySqlStore = $store;
        let mut lent = store.lend().await?;
        let answer = {
            let $conn: &mut sqlx::MySqlConnection = &mut lent;
            tokio::time::timeout(store.shared.statement_timeout, $op).await
        };
        store.settle(&mut lent, answer)
    }};
}

impl MySqlStore {
    /// Connects to the database at `url` with the default [`MySqlOptions`].
    pub async fn open(url: &str) -> Result<MySqlStore, Error> {
        MySqlStore::connect_with(url, MySqlOptions::default()).await
    }

    /// Connects to the database of `config`'s URL with the options read from `config`
    /// ([`MySqlOptions::from`]): what `idem::init` and [`Idem::connect`](crate::Idem::connect)
    /// do for `IDEM_STORE=mysql://…`.
    ///
    /// Fails as [`connect_with`](MySqlStore::connect_with) does.
    pub async fn connect(config: &Config) -> Result<MySqlStore, Error> {
        MySqlStore::connect_with(&config.store, MySqlOptions::from(config)).await
    }

    /// Connects to the database at `url` (`mysql://user:password@host:port/database`, or
    /// `mariadb://…`) with `options`, and creates the table if it is missing (unless
    /// `options.create_table` is off).
    ///
    /// Fails with [`Error::Config`] for a URL that does not parse or names no database, a
    /// refused user or password or an unknown database, invalid options, or a missing table
    /// that is not to be created (the message holds the SQL to run); with [`Error::Connect`]
    /// when the server does not answer.
    ///
    /// ```no_run
    /// # use idem_runtime as idem;
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idem::Error> {
    /// let options = idem::MySqlOptions::default()
    ///     .table("idempotency")
    ///     .pool_size(4)
    ///     .statement_timeout(Duration::from_millis(500));
    /// let store = idem::MySqlStore::connect_with("mysql://app:secret@db:3306/app", options).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(url: &str, options: MySqlOptions) -> Result<MySqlStore, Error> {
        let table = options.checked()?;
        let (pool, describe) = connect::open(url, &options, &table)?;
        MySqlStore::build(pool, describe, table, &options).await
    }

    /// A store on a pool the application already has, with its own settings (`pool_size` is
    /// ignored); the table is checked and created as by
    /// [`connect_with`](MySqlStore::connect_with). A claim's insert never waits on a row lock,
    /// as on the store's own connections; for the other statements the pool's connections keep
    /// their own `innodb_lock_wait_timeout` (50 s by default): a completion, release or renewal
    /// of a key whose row a caller's open transaction has locked (its insert met the row) waits
    /// that long at most, where the store's own connections wait 1 s.
    ///
    /// ```no_run
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idem::Error> {
    /// let pool = sqlx::MySqlPool::connect_lazy("mysql://app:secret@db:3306/app").unwrap();
    /// let store = idem::MySqlStore::from_pool(pool, idem::MySqlOptions::default()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_pool(pool: MySqlPool, options: MySqlOptions) -> Result<MySqlStore, Error> {
        let table = options.checked()?;
        let describe = connect::describe(&pool.connect_options(), &table);
        MySqlStore::build(pool, describe, table, &options).await
    }

    async fn build(
        pool: MySqlPool,
        describe: String,
        table: Table,
        options: &MySqlOptions,
    ) -> Result<MySqlStore, Error> {
        let sql = Arc::new(Statements::new(&table));
        table::prepare(&pool, &describe, &table, options.create_table).await?;
        let tokens = TokenStatements::new(&table);
        if options.create_table {
            // Without it, token operations fail saying what to create; calls are unaffected.
            let created = sqlx::raw_sql(sqlx::AssertSqlSafe(tokens.migration().to_owned()))
                .execute(&pool)
                .await;
            if let Err(error) = created {
                tracing::warn!(%error, "idem could not create the MySQL table of tokens; idem::tokens will fail until it exists");
            }
        }
        Ok(MySqlStore {
            shared: Arc::new(Shared {
                tokens,
                _reaper: Reaper::start(
                    pool.clone(),
                    sql.clone(),
                    options.reaper_interval,
                    options.reaper_batch,
                ),
                pool,
                sql,
                table,
                waiters: Waiters::default(),
                order: Order::new(options.claim_order, Start::ReadFirst),
                describe,
                statement_timeout: options.statement_timeout,
                poll_interval: options.poll_interval,
            }),
        })
    }

    /// The pool the store runs its statements on: the application's own with
    /// [`from_pool`](MySqlStore::from_pool).
    pub fn pool(&self) -> &MySqlPool {
        &self.shared.pool
    }

    /// A connection of the pool.
    async fn lend(&self) -> Result<PoolConnection<MySql>, StoreError> {
        self.shared.pool.acquire().await.map_err(|e| self.failed(e))
    }

    /// The answer of a statement run on `conn`, and whether `conn` may be reused.
    fn settle<T>(
        &self,
        conn: &mut PoolConnection<MySql>,
        answer: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if failure::breaks_connection(&error) {
                    conn.close_on_drop();
                }
                Err(self.failed(error))
            }
            Err(_) => {
                // The statement may still be running: the connection is not reused.
                conn.close_on_drop();
                Err(failure::timed_out(
                    &self.shared.describe,
                    self.shared.statement_timeout,
                ))
            }
        }
    }

    fn failed(&self, error: sqlx::Error) -> StoreError {
        failure::store_error(error, &self.shared.describe)
    }

    /// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
    async fn lease_left(&self, key: &str, holder: &Claim) -> Result<Option<Duration>, StoreError> {
        let sql = &self.shared.sql;
        on_connection!(self, |conn| sql::lease_left(conn, sql, key, holder))
    }

    /// Claims an absent key on one connection, or, with `expired`, an expired one: `Ok(true)`
    /// if it did, `Ok(false)` if a row holds the key (a live one, or without `expired` any:
    /// the caller reads it), `Err` with the lock error when a transaction holds the row past
    /// [`CLAIM_LOCK_WAIT`] seconds.
    async fn take(
        conn: &mut sqlx::MySqlConnection,
        sql: &Statements,
        key: &str,
        claim: &Claim,
        lease: Duration,
        expired: bool,
    ) -> Result<bool, sqlx::Error> {
        match sql::insert(&mut *conn, sql, key, claim, lease, CLAIM_LOCK_WAIT).await {
            Ok(()) => Ok(true),
            Err(error) if failure::duplicate(&error) && expired => {
                sql::take_expired(&mut *conn, sql, key, claim, lease).await
            }
            Err(error) if failure::duplicate(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

impl Store for MySqlStore {
    /// Reads the live record; without one, inserts the claim (or takes over an expired row).
    /// A replay and a duplicate are one read each. While first calls clearly outnumber the
    /// rest, it inserts first instead (`order.rs`): a first call is then one statement less,
    /// and a key that holds a record costs the insert that meets it before the read.
    async fn claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let shared = &self.shared;
        let insert_first = shared.order.first() == First::Insert;
        for tried in 0..CLAIM_TRIES {
            // Inserting first, a key that holds a row is read before anything else is tried:
            // it is most likely live (a replay, a duplicate), and an expired one is taken over
            // after the read found nothing.
            let read = tried > 0 || !insert_first;
            if read {
                let found = on_connection!(self, |conn| sql::live(conn, &shared.sql, key))?;
                if let Some(record) = found {
                    shared.order.found(true);
                    return Ok(Some(record));
                }
            }
            // Noted before the claim exists, so that no waiter of it ever polls.
            let making = shared.waiters.making(claim.token);
            let mut lent = self.lend().await?;
            let answer = {
                let conn: &mut sqlx::MySqlConnection = &mut lent;
                let take = MySqlStore::take(conn, &shared.sql, key, claim, lease, read);
                tokio::time::timeout(shared.statement_timeout, take).await
            };
            let taken = match answer {
                // A transaction that has not ended holds the key's row: perhaps a caller's
                // that claimed it (`tx = conn`), invisible until it commits. Waiting for
                // it is `wait`'s job, never a store failure (which fail-open would run
                // through, a second execution).
                Ok(Err(error)) if failure::lock_timed_out(&error) => None,
                answer => Some(self.settle(&mut lent, answer)?),
            };
            match taken {
                Some(true) => {
                    making.keep();
                    shared.order.found(false);
                    return Ok(None);
                }
                // A live row holds the key: read it. Inserting first, that is the way to a
                // replay, read at once; after a read, another claim took the key in between.
                Some(false) if !read => {
                    drop(making);
                    continue;
                }
                Some(false) => drop(making),
                None => {
                    shared.order.found(true);
                    return Ok(Some(Record::InProgress(Claim {
                        token: UNSEEN_HOLDER,
                        fingerprint: None,
                    })));
                }
            }
            tokio::task::yield_now().await;
        }
        Err(StoreError::new(
            StoreErrorKind::Protocol,
            format!(
                "MySQL at {} kept freeing the key of a claim between its read and its insert",
                shared.describe
            ),
        ))
    }

    async fn complete(
        &self,
        key: &str,
        claim: &Claim,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<Fence, StoreError> {
        let shared = &self.shared;
        let sql = &shared.sql;
        // A failure leaves the claim as it was (one statement, applied whole or not at
        // all): the engine tries again, still the holder.
        let held = on_connection!(self, |conn| sql::complete(
            conn, sql, key, claim, payload, ttl
        ))?;
        shared.waiters.end(claim.token);
        shared.waiters.wake(key);
        Ok(Fence::from_held(held))
    }

    async fn release(&self, key: &str, claim: &Claim) -> Result<Fence, StoreError> {
        let shared = &self.shared;
        let sql = &shared.sql;
        let held = on_connection!(self, |conn| sql::release(conn, sql, key, claim));
        // Released or not, the engine does not ask again: the claim ends here or with its
        // lease, and its waiters look for themselves.
        shared.waiters.end(claim.token);
        let held = held?;
        shared.waiters.wake(key);
        Ok(Fence::from_held(held))
    }

    async fn renew(&self, key: &str, claim: &Claim, lease: Duration) -> Result<Fence, StoreError> {
        let sql = &self.shared.sql;
        let held = on_connection!(self, |conn| sql::renew(conn, sql, key, claim, lease))?;
        Ok(Fence::from_held(held))
    }

    /// Returns when this store completes or releases the key, when the holder's lease ends, or
    /// when a look every `poll_interval` finds the holder gone (a holder this store did not
    /// claim for: another process, another store on the table). A holder it cannot see (a
    /// caller's transaction) is waited for on the key's row lock, whole seconds at a time.
    async fn wait(&self, key: &str, holder: &Claim, timeout: Duration) -> Result<(), StoreError> {
        let shared = &self.shared;
        if holder.token == UNSEEN_HOLDER {
            if timeout < Duration::from_secs(1) {
                // Less than InnoDB's shortest lock wait: the next claim looks again.
                tokio::time::sleep(timeout.min(shared.poll_interval)).await;
                return Ok(());
            }
            let sql = &shared.sql;
            let mut lent = self.lend().await?;
            let waited = {
                let conn: &mut sqlx::MySqlConnection = &mut lent;
                // The statements' own time besides the lock wait.
                let within = timeout + shared.statement_timeout;
                tokio::time::timeout(within, sql::lock_wait(conn, sql, key, timeout)).await
            };
            return self.settle(&mut lent, waited);
        }
        let deadline = Instant::now() + timeout;
        let ticket = shared.waiters.register(key);
        let woken = ticket.wake().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // Registered first, then look: a completion after the look wakes us.
        loop {
            let Some(left) = self.lease_left(key, holder).await? else {
                return Ok(());
            };
            let now = Instant::now();
            // A holder that crashed sends nothing: its lease ending is the last wake-up.
            let last = deadline.min(now + left + LEASE_GRACE);
            let until = if shared.waiters.holds(holder.token) {
                last
            } else {
                last.min(now + shared.poll_interval)
            };
            if tokio::time::timeout_at(until, woken.as_mut()).await.is_ok() || until >= last {
                return Ok(());
            }
        }
    }

    /// One `SELECT` of the live row; the fingerprint of a completed record is the row's
    /// `fingerprint` column.
    async fn inspect(&self, key: &str) -> Result<Inspection, StoreError> {
        let sql = &self.shared.sql;
        on_connection!(self, |conn| sql::inspect(conn, sql, key))
    }

    /// A `DELETE` of the live row (and of an expired one, when there was no live one), which
    /// wakes the waiters of the key in this process.
    async fn forget(&self, key: &str) -> Result<bool, StoreError> {
        let shared = &self.shared;
        let live = sql::forget(&shared.pool, &shared.sql, key)
            .await
            .map_err(|e| self.failed(e))?;
        shared.waiters.wake(key);
        Ok(live)
    }

    /// The live rows of the prefix's key range (an index range of the primary key), read in
    /// batches of at most 1000 keys, one statement each, and counted by state and scope;
    /// [`Stats::store_keys`] is InnoDB's estimate of the table's rows (`table_rows`, expired
    /// rows the reaper has not deleted yet included).
    async fn stats(&self, prefix: &str, limit: usize) -> Result<Stats, StoreError> {
        let shared = &self.shared;
        let mut stats = sql::stats(&shared.pool, &shared.sql, &shared.table, prefix, limit)
            .await
            .map_err(|e| self.failed(e))?;
        let (live, redeemed) =
            match tokens::count(&shared.pool, &shared.tokens, prefix, limit).await {
                Err(error) if tokens::no_table(&error) => (0, 0),
                counted => counted.map_err(|e| self.failed(e))?,
            };
        stats.tokens += live;
        stats.redeemed_tokens += redeemed;
        Ok(stats)
    }

    /// One `INSERT` (within the bound: its count in the same statement, under InnoDB's shared
    /// locks), then a `DELETE` of a few expired tokens; see `tokens.rs`.
    async fn issue_token(
        &self,
        token: &TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> Result<Issue, StoreError> {
        let shared = &self.shared;
        let issued = match tokens::issue(&shared.pool, &shared.tokens, token, ttl, max_live).await {
            Err(error) if tokens::no_table(&error) => {
                return Err(shared.tokens.missing(&shared.describe));
            }
            issued => issued.map_err(|e| self.failed(e))?,
        };
        if let Err(error) = tokens::sweep(&shared.pool, &shared.tokens).await {
            tracing::debug!(%error, "idem could not delete expired MySQL tokens; the next issue tries again");
        }
        Ok(issued)
    }

    /// One conditional `UPDATE` (a valid redemption), a `SELECT` after it otherwise; see
    /// `tokens.rs`.
    async fn redeem_token(
        &self,
        token: &TokenKey,
        keep: Duration,
    ) -> Result<Redemption, StoreError> {
        let shared = &self.shared;
        match tokens::redeem(&shared.pool, &shared.tokens, token, keep).await {
            Err(error) if tokens::no_table(&error) => Err(shared.tokens.missing(&shared.describe)),
            redeemed => redeemed.map_err(|e| self.failed(e)),
        }
    }

    fn describe(&self) -> String {
        self.shared.describe.clone()
    }
}

impl fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlStore")
            .field("store", &self.shared.describe)
            .field("statement_timeout", &self.shared.statement_timeout)
            .field("poll_interval", &self.shared.poll_interval)
            .finish_non_exhaustive()
    }
}
