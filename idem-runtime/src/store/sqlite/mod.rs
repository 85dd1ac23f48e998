//! [`SqliteStore`]: durable records with no server, in a SQLite file.
//!
//! One row per key in a table whose SQL is public ([`MIGRATION`], see `table.rs`); every
//! operation is one statement in its own implicit transaction (no `BEGIN`/`COMMIT`, see
//! `sql.rs`), except a claim that finds no live record, which reads and then inserts. The file
//! is in WAL mode: readers never wait for the writer, and see a record whole or not at all.
//! Writes of this process go through one connection of the store's own, so they queue in the
//! pool instead of in SQLite's lock; another process's writes meet them at SQLite's lock, which
//! a statement waits for up to `busy_timeout`. Waiters are woken by this store's completions,
//! and look again every `poll_interval` for a holder elsewhere (see `waiters.rs`); expired rows
//! are deleted in the background in bounded batches (see `reaper.rs`).
//!
//! The other files, one concern each: `options.rs` ([`SqliteOptions`]), `connect.rs` (the URL
//! and the pools the store opens), `failure.rs` (SQLite's result codes as store errors),
//! `tokens.rs` (server-issued tokens, in a table of their own).

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

use sqlx::SqlitePool;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::record::{Claim, Record, Token};
use crate::store::{Fence, Inspection, Issue, Redemption, Stats, Store, TokenKey};

pub use self::options::SqliteOptions;
pub use self::table::MIGRATION;
pub use self::tokens::TOKENS_MIGRATION;

use self::connect::{Pools, describe};
use self::reaper::Reaper;
use self::sql::Statements;
use self::table::Table;
use self::tokens::TokenStatements;
use self::waiters::Waiters;

/// How long after the holder's lease ends a waiter looks again, for the row to have expired.
const LEASE_GRACE: Duration = Duration::from_millis(2);

/// How often a claim reads and tries again when a concurrent claim takes the key between its
/// read and its insert and then frees it at once.
const CLAIM_TRIES: u32 = 8;

/// A [`Store`] in a SQLite file: records that survive restarts, with no server, for the
/// processes of one machine.
///
/// ```no_run
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let store = idem::SqliteStore::open("sqlite:///var/lib/app/idem.db").await?;
/// let outcome = idem::Call::new("billing::invoice", "inv-42")
///     .store(store.clone())
///     .run(async { 42_u64 })
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// Build it from a URL ([`open`](SqliteStore::open), [`connect`](SqliteStore::connect) with
/// [`SqliteOptions`]) or from a pool the application already has
/// ([`from_pool`](SqliteStore::from_pool)). URLs are sqlx's: `sqlite://idem.db` (relative to
/// the working directory), `sqlite:///var/lib/app/idem.db` (absolute); the file is created when
/// missing (its directory must exist). `sqlite::memory:` is a database of this store alone,
/// gone with it: for tests.
///
/// Records are rows of one table (by default `idem_records`, created by `connect` when
/// missing): `key`, `state` (`in_progress` or `completed`), the claim's `token`, the
/// request's `fingerprint`, the `payload` (the JSON envelope of the result) and `expires_at`
/// (milliseconds since the Unix epoch). A row past `expires_at` is absent to every operation,
/// by SQLite's clock (the machine's, the same for every process that opens the file); a
/// background reaper deletes such rows in batches.
///
/// **Durability.** The file is in WAL mode with `synchronous = FULL`: a completed result is on
/// disk before the call returns, and survives a crash of the process or of the machine
/// ([`SqliteOptions::full_sync`] trades that for faster writes).
///
/// **Duplicates.** A call that finds the key held waits for the holder up to its `wait`, then
/// replays the result (or runs, if the holder released the key or its lease ended), or fails
/// with [`Error::InProgress`]; it holds no lock while it waits. A holder of this store wakes
/// its waiters when it ends; a holder in another process is seen by waiters that look again
/// every [`poll_interval`](SqliteOptions::poll_interval).
///
/// **Locks.** Each write holds the database's write lock for one statement. A statement that
/// finds the lock held by another connection (another process, or an application's own
/// transaction on the file) waits up to [`busy_timeout`](SqliteOptions::busy_timeout) (2 s by
/// default). Past it, a claim treats the key as held by a claim it cannot see (a transaction
/// in the transactional mode, `tx = conn`, may hold it until it commits): the call waits within
/// its `wait`, trying again every [`poll_interval`](SqliteOptions::poll_interval) (each try
/// waits up to `busy_timeout` for the lock), then replays, runs, or fails with
/// [`Error::InProgress`]; never [`Error::Store`], so `fail_mode = open` never runs a second
/// execution through it. Other writes (completion, release, renewal) fail past
/// `busy_timeout` with a [`StoreError`] of kind [`StoreErrorKind::Timeout`]. A replay is a
/// read, and reads never wait in WAL mode.
///
/// Cloning it is cheap and shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// Reads: claims that find a record, waiters, operators.
    reads: SqlitePool,
    /// Writes: one connection when the store opened the file; the same pool as `reads`
    /// otherwise.
    writes: SqlitePool,
    sql: Arc<Statements>,
    /// The table, for the transactional mode's messages.
    table: Table,
    tokens: TokenStatements,
    waiters: Waiters,
    _reaper: Reaper,
    describe: String,
    /// The store's `busy_timeout`, when it set it (not on an application's pool).
    busy_timeout: Option<Duration>,
    poll_interval: Duration,
}

impl SqliteStore {
    /// Opens (or creates) the SQLite database at `url` with the default [`SqliteOptions`].
    ///
    /// ```no_run
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idem::Error> {
    /// // Every call of the process, on the file.
    /// let store = idem::SqliteStore::open("sqlite:///var/lib/app/idem.db").await?;
    /// idem::install(idem::Idem::with_settings(store, &idem::Config::default()))?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(url: &str) -> Result<SqliteStore, Error> {
        SqliteStore::connect_with(url, SqliteOptions::default()).await
    }

    /// Opens the database of `config`'s URL with the options read from `config`
    /// ([`SqliteOptions::from`]): what `idem::init` and [`Idem::connect`](crate::Idem::connect)
    /// do for `IDEM_STORE=sqlite://…`.
    ///
    /// Fails as [`connect_with`](SqliteStore::connect_with) does.
    pub async fn connect(config: &Config) -> Result<SqliteStore, Error> {
        SqliteStore::connect_with(&config.store, SqliteOptions::from(config)).await
    }

    /// Opens (or creates) the SQLite database at `url` with `options`: WAL mode,
    /// `synchronous = FULL` (or `NORMAL`, see [`SqliteOptions::full_sync`]), `busy_timeout`;
    /// creates the table if it is missing (unless `options.create_table` is off).
    ///
    /// Fails with [`Error::Config`] for a URL that does not parse, a file that cannot be opened
    /// as a database (a missing directory, permissions, another kind of file), invalid
    /// options, or a missing table that is not to be created (the message holds the SQL to
    /// run); with [`Error::Connect`] when the file stays locked past `connect_timeout`.
    ///
    /// ```no_run
    /// # use idem_runtime as idem;
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idem::Error> {
    /// let options = idem::SqliteOptions::default()
    ///     .busy_timeout(Duration::from_millis(500))
    ///     .pool_size(2);
    /// let store = idem::SqliteStore::connect_with("sqlite://idem.db", options).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(url: &str, options: SqliteOptions) -> Result<SqliteStore, Error> {
        let options = &options;
        let table = options.checked()?;
        let Pools {
            reads,
            writes,
            describe,
        } = Pools::open(url, options, &table)?;
        SqliteStore::build(
            reads,
            writes,
            describe,
            Some(options.busy_timeout),
            table,
            options,
        )
        .await
    }

    /// A store on a pool the application already has: its statements, reads and writes, run
    /// on that pool with its own settings (journal mode, `synchronous`, `busy_timeout`;
    /// `options.pool_size`, `busy_timeout` and `full_sync` are ignored), and the table is
    /// checked and created as by [`connect_with`](SqliteStore::connect_with). Open the pool's file in
    /// WAL mode (`SqliteConnectOptions::journal_mode`), or readers and writers wait for each
    /// other.
    ///
    /// ```no_run
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idem::Error> {
    /// use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
    /// let file = SqliteConnectOptions::new()
    ///     .filename("app.db")
    ///     .create_if_missing(true)
    ///     .journal_mode(SqliteJournalMode::Wal);
    /// let pool = SqlitePool::connect_lazy_with(file);
    /// let store = idem::SqliteStore::from_pool(pool, idem::SqliteOptions::default()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_pool(pool: SqlitePool, options: SqliteOptions) -> Result<SqliteStore, Error> {
        let options = &options;
        let table = options.checked()?;
        let describe = describe(&pool.connect_options(), &table);
        SqliteStore::build(pool.clone(), pool, describe, None, table, options).await
    }

    async fn build(
        reads: SqlitePool,
        writes: SqlitePool,
        describe: String,
        busy_timeout: Option<Duration>,
        table: Table,
        options: &SqliteOptions,
    ) -> Result<SqliteStore, Error> {
        let sql = Arc::new(Statements::new(&table));
        // Through the writes' pool: its one connection is the one that may create the file.
        table::prepare(
            &writes,
            &describe,
            &table,
            options.create_table,
            options.connect_timeout,
        )
        .await?;
        let tokens = TokenStatements::new(&table);
        if options.create_table {
            // Without it, token operations fail saying what to create; calls are unaffected.
            let created = sqlx::raw_sql(sqlx::AssertSqlSafe(tokens.migration().to_owned()))
                .execute(&writes)
                .await;
            if let Err(error) = created {
                tracing::warn!(%error, "idem could not create the SQLite table of tokens; idem::tokens will fail until it exists");
            }
        }
        Ok(SqliteStore {
            shared: Arc::new(Shared {
                tokens,
                _reaper: Reaper::start(
                    writes.clone(),
                    sql.clone(),
                    options.reaper_interval,
                    options.reaper_batch,
                ),
                reads,
                writes,
                sql,
                table,
                waiters: Waiters::default(),
                describe,
                busy_timeout,
                poll_interval: options.poll_interval,
            }),
        })
    }

    /// The pool the store reads through: the application's own with
    /// [`from_pool`](SqliteStore::from_pool). It can write too (its statements then meet the
    /// store's at SQLite's lock, as another process's would).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = idem::SqliteStore::open("sqlite::memory:").await?;
    /// idem::Call::new("billing::invoice", "inv-42")
    ///     .store(store.clone())
    ///     .run(async { 42_u64 })
    ///     .await?;
    /// let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM idem_records WHERE state = 'completed'")
    ///     .fetch_one(store.pool())
    ///     .await?;
    /// assert_eq!(rows, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool(&self) -> &SqlitePool {
        &self.shared.reads
    }

    fn failed(&self, error: sqlx::Error) -> StoreError {
        failure::store_error(error, &self.shared.describe, self.shared.busy_timeout)
    }

    /// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
    async fn lease_left(&self, key: &str, holder: &Claim) -> Result<Option<Duration>, StoreError> {
        let shared = &self.shared;
        sql::lease_left(&shared.reads, &shared.sql, key, holder)
            .await
            .map_err(|e| self.failed(e))
    }
}

impl Store for SqliteStore {
    /// Reads the live record; without one, inserts the claim (or takes over an expired row) in
    /// one statement. A replay and a duplicate are one read each.
    async fn claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let shared = &self.shared;
        for _ in 0..CLAIM_TRIES {
            let found = sql::live(&shared.reads, &shared.sql, key)
                .await
                .map_err(|e| self.failed(e))?;
            if let Some(record) = found {
                return Ok(Some(record));
            }
            // Noted before the claim exists, so that no waiter of it ever polls.
            let making = shared.waiters.making(claim.token);
            match sql::take(&shared.writes, &shared.sql, key, claim, lease).await {
                Ok(true) => {
                    making.keep();
                    return Ok(None);
                }
                // Another claim took the key since the read: read it.
                Ok(false) => drop(making),
                // The write lock stayed held past `busy_timeout`: perhaps by a caller's
                // transaction that claimed this key (`tx = conn`), invisible until it
                // commits. Waiting for it is `wait`'s job, never a store failure (which
                // fail-open would run through, a second execution).
                Err(error) if failure::locked(&error) => {
                    return Ok(Some(Record::InProgress(Claim {
                        token: Token::UNSEEN,
                        fingerprint: None,
                    })));
                }
                Err(error) => return Err(self.failed(error)),
            }
            tokio::task::yield_now().await;
        }
        Err(StoreError::new(
            StoreErrorKind::Protocol,
            format!(
                "the SQLite database {} kept freeing the key of a claim between its read and its insert",
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
        // A failure leaves the claim as it was (SQLite applies a statement whole or not
        // at all): the engine tries again, still the holder.
        let held = sql::complete(&shared.writes, &shared.sql, key, claim, payload, ttl)
            .await
            .map_err(|e| self.failed(e))?;
        shared.waiters.end(claim.token);
        shared.waiters.wake(key);
        Ok(Fence::from_held(held))
    }

    async fn release(&self, key: &str, claim: &Claim) -> Result<Fence, StoreError> {
        let shared = &self.shared;
        let held = sql::release(&shared.writes, &shared.sql, key, claim).await;
        // Released or not, the engine does not ask again: the claim ends here or with its
        // lease, and its waiters look for themselves.
        shared.waiters.end(claim.token);
        let held = held.map_err(|e| self.failed(e))?;
        shared.waiters.wake(key);
        Ok(Fence::from_held(held))
    }

    async fn renew(&self, key: &str, claim: &Claim, lease: Duration) -> Result<Fence, StoreError> {
        let shared = &self.shared;
        let held = sql::renew(&shared.writes, &shared.sql, key, claim, lease)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(Fence::from_held(held))
    }

    /// Returns when this store completes or releases the key, when the holder's lease ends, or
    /// when a look every `poll_interval` finds the holder gone (a holder this store did not
    /// claim for: another process, another store on the file).
    async fn wait(&self, key: &str, holder: &Claim, timeout: Duration) -> Result<(), StoreError> {
        let shared = &self.shared;
        // A holder behind the write lock: the next claim tries the lock again.
        if holder.token == Token::UNSEEN {
            tokio::time::sleep(timeout.min(shared.poll_interval)).await;
            return Ok(());
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
        let shared = &self.shared;
        sql::inspect(&shared.reads, &shared.sql, key)
            .await
            .map_err(|e| self.failed(e))
    }

    /// One `DELETE`, which wakes the waiters of the key in this process.
    async fn forget(&self, key: &str) -> Result<bool, StoreError> {
        let shared = &self.shared;
        let live = sql::forget(&shared.writes, &shared.sql, key)
            .await
            .map_err(|e| self.failed(e))?;
        shared.waiters.wake(key);
        Ok(live)
    }

    /// The live rows of the prefix's key range (an index range of the primary key), read in
    /// batches of at most 1000 keys, one statement each, and counted by state and scope;
    /// [`Stats::store_keys`] is the table's row count (expired rows the reaper has not deleted
    /// yet included).
    async fn stats(&self, prefix: &str, limit: usize) -> Result<Stats, StoreError> {
        let shared = &self.shared;
        let mut stats = sql::stats(&shared.reads, &shared.sql, prefix, limit)
            .await
            .map_err(|e| self.failed(e))?;
        let (live, redeemed) =
            match tokens::count(&shared.reads, &shared.tokens, prefix, limit).await {
                Err(error) if tokens::no_table(&error) => (0, 0),
                counted => counted.map_err(|e| self.failed(e))?,
            };
        stats.tokens += live;
        stats.redeemed_tokens += redeemed;
        Ok(stats)
    }

    /// One `INSERT` within the bound (its count in the same statement), then a `DELETE` of a
    /// few expired tokens; see `tokens.rs`.
    async fn issue_token(
        &self,
        token: &TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> Result<Issue, StoreError> {
        let shared = &self.shared;
        let issued = match tokens::issue(&shared.writes, &shared.tokens, token, ttl, max_live).await
        {
            Err(error) if tokens::no_table(&error) => {
                return Err(shared.tokens.missing(&shared.describe));
            }
            issued => issued.map_err(|e| self.failed(e))?,
        };
        if let Err(error) = tokens::sweep(&shared.writes, &shared.tokens).await {
            tracing::debug!(%error, "idem could not delete expired SQLite tokens; the next issue tries again");
        }
        Ok(issued)
    }

    /// One `UPDATE … RETURNING`; see `tokens.rs`.
    async fn redeem_token(
        &self,
        token: &TokenKey,
        keep: Duration,
    ) -> Result<Redemption, StoreError> {
        let shared = &self.shared;
        match tokens::redeem(&shared.writes, &shared.tokens, token, keep).await {
            Err(error) if tokens::no_table(&error) => Err(shared.tokens.missing(&shared.describe)),
            redeemed => redeemed.map_err(|e| self.failed(e)),
        }
    }

    fn describe(&self) -> String {
        self.shared.describe.clone()
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("store", &self.shared.describe)
            .field("busy_timeout", &self.shared.busy_timeout)
            .field("poll_interval", &self.shared.poll_interval)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
