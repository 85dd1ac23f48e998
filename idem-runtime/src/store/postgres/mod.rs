//! [`PostgresStore`]: the store shared by processes and machines, on PostgreSQL.
//!
//! One row per key in a table whose SQL is public ([`MIGRATION`], see `table.rs`); every
//! operation is one statement in its own implicit transaction (no `BEGIN`/`COMMIT`), prepared
//! once per connection (see `sql.rs`): a replay costs one statement, a first call two (claim,
//! complete); while replays clearly outnumber first calls, a claim reads the key first
//! (`order.rs`): a replay is then a bare read, a first call three statements; while first
//! calls clearly outnumber the rest, it claims by a bare upsert that reads nothing: a first
//! call is then two cheaper statements, a replay two. Expiry is
//! decided by the database's clock. Waiters are woken by `LISTEN`/`NOTIFY` (see `listen.rs`),
//! and poll where that does not work; expired rows are deleted in the background in bounded
//! batches (see `reaper.rs`). Behind a pooler in transaction mode, statements are sent with
//! their values written in instead of prepared (see `sent.rs`). Server-issued tokens have a table of their own beside it (see
//! `tokens.rs`).
//!
//! The transactional mode (`tx = conn`) writes the same rows through the caller's connection
//! (`tx.rs`), on sqlx or on tokio-postgres (feature `tokio-postgres`, `tokio_postgres.rs`):
//! both drivers' connections are a `Session` (`session.rs`), so the store and its statements
//! are written once.
//!
//! A key claimed inside a caller's transaction that has not committed (the transactional
//! mode) is invisible here, but its row is locked: a claim waits on that lock for
//! `CLAIM_LOCK_WAIT` (50 ms) at most, then reports the key in progress, and [`Store::wait`]
//! waits on the lock itself (a statement in a transaction of its own, rolled back), bounded by
//! the call's `wait`. A lock wait is never a store failure: it is neither `Error::Store` nor a
//! reason to run the body unprotected.

mod failure;
mod listen;
mod options;
mod reaper;
mod sent;
mod session;
mod sql;
mod table;
mod tokens;
#[cfg(feature = "tokio-postgres")]
mod tokio_postgres;
pub(crate) mod tx;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Error, StoreError};
use crate::record::{Claim, Record, Token};
use crate::store::order::First;
use crate::store::tx::{Claimed, UNSEEN_RETRIES};
use crate::store::{Fence, Inspection, Issue, Redemption, Stats, Store, TokenKey};

pub use self::options::PostgresOptions;
pub use self::table::MIGRATION;
pub use self::tokens::TOKENS_MIGRATION;

use self::listen::{Hub, Listening};
use self::reaper::Reaper;
use self::sql::Statements;
use self::table::Table;
use self::tokens::{TokenStatements, TokenTable};

/// Runs `$op`, an expression of `$conn: &mut PgConnection`, on a connection of the store's
/// pool within the statement timeout, and again on another connection when one is broken.
macro_rules! on_connection {
    ($store:expr, |$conn:ident| $op:expr) => {{
        let store: &PostgresStore = $store;
        let mut tries = 0_u32;
        loop {
            tries += 1;
            let mut lent = store.lend().await?;
            let answer = {
                let $conn: &mut PgConnection = &mut lent;
                tokio::time::timeout(store.shared.statement_timeout, $op).await
            };
            if let Some(result) = store.settle(&mut lent, answer, tries) {
                break result;
            }
        }
    }};
}

/// How long after the holder's lease ends a waiter looks again, for the row to have expired.
const LEASE_GRACE: Duration = Duration::from_millis(2);

/// How long a waiter sleeps before its first look again while no listener can wake it (it is
/// down, or its `LISTEN` carries nothing, behind a pooler in transaction mode).
const POLL_FIRST: Duration = Duration::from_millis(5);

/// How long a polling waiter sleeps between looks at most: each sleep doubles up to it.
const POLL_MAX: Duration = Duration::from_millis(100);

/// How long a claim waits on the key's row lock before it reports the key held by a claim it
/// cannot see (a caller's transaction that has not ended); the wait for that transaction then
/// goes on in [`Store::wait`], bounded by the call's `wait`. A concurrent plain claim holds the
/// lock for one statement only, far less than this.
const CLAIM_LOCK_WAIT: Duration = Duration::from_millis(50);

/// The holder [`PostgresStore::claim`] reports for a key held by a claim it cannot see: its
/// row is locked by a transaction that has not ended.
const UNSEEN_HOLDER: Token = Token::UNSEEN;

/// A [`Store`] on PostgreSQL: exactly-once across every process and machine that shares the
/// database.
///
/// ```no_run
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let store = idem::PostgresStore::open("postgres://app:secret@127.0.0.1:5432/app").await?;
/// let outcome = idem::Call::new("billing::invoice", "inv-42")
///     .store(store.clone())
///     .run(async { 42_u64 })
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// Build it from a [`Config`] ([`connect`](PostgresStore::connect), or let
/// [`init`](crate::init) do it for `IDEM_STORE=postgres://…`), from a URL
/// ([`open`](PostgresStore::open), [`connect_with`](PostgresStore::connect_with) with
/// [`PostgresOptions`]), or from a pool the application already has
/// ([`from_pool`](PostgresStore::from_pool)). URLs are libpq's: `postgres://user:password@host:port/db` (or
/// `postgresql://`), with `?sslmode=require` (or `verify-full`) for TLS through rustls,
/// checked against the system's roots.
///
/// Records are rows of one table (by default `public.idem_records`, created by `connect` when
/// missing): `key`, `state` (`in_progress` or `completed`), the claim's `token`, the
/// request's `fingerprint`, the `payload` (the JSON envelope of the result) and `expires_at`.
/// A row past `expires_at` is absent to every operation, by the database's clock; a
/// background reaper deletes such rows in batches. Keys cannot hold NUL characters (a
/// PostgreSQL `text` cannot): such a key is a [`StoreError`].
///
/// Each operation has a timeout (`statement_timeout`, on the server and in the store) and
/// fails with a [`StoreError`] instead of hanging; broken connections are replaced, so calls
/// work again as soon as the server is back. Cloning it is cheap and shares the connections.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    sql: Arc<Statements>,
    table: Table,
    token_table: TokenTable,
    token_sql: TokenStatements,
    hub: Hub,
    _reaper: Reaper,
    describe: String,
    pool_size: u32,
    connect_timeout: Duration,
    statement_timeout: Duration,
    /// Set when a connection broke: the next operation first checks that the server accepts
    /// connections, so that a server that is down fails at once instead of after the pool's
    /// connection retries.
    suspect: AtomicBool,
}

impl PostgresStore {
    /// Connects to the PostgreSQL that `config` names (its `store` URL), with the PostgreSQL
    /// settings of `config` (`PostgresOptions::from(config)`): what [`init`](crate::init) does
    /// for `IDEM_STORE=postgres://…`.
    ///
    /// Fails as [`connect_with`](PostgresStore::connect_with) does.
    pub async fn connect(config: &Config) -> Result<PostgresStore, Error> {
        PostgresStore::connect_with(&config.store, PostgresOptions::from(config)).await
    }

    /// Connects to the PostgreSQL at `url` with the default [`PostgresOptions`].
    pub async fn open(url: &str) -> Result<PostgresStore, Error> {
        PostgresStore::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to the PostgreSQL at `url` with `options`, checks that it answers, and
    /// creates the table if it is missing (unless `options.create_table` is off).
    ///
    /// Fails with [`Error::Config`] for a URL that does not parse, credentials or a database
    /// the server refuses, invalid options, or a missing table that is not to be created
    /// (the message holds the SQL to run); with [`Error::Connect`] when the server cannot be
    /// reached within `connect_timeout`.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<PostgresStore, Error> {
        options.checked()?;
        let connect: PgConnectOptions = url.parse().map_err(|e| {
            Error::Config(format!(
                "the PostgreSQL URL is not valid ({e}); expected postgres://user:password@host:port/database"
            ))
        })?;
        let timeout = sql::millis(options.statement_timeout).to_string();
        let connect = connect
            .application_name(&options.application_name)
            .options([("statement_timeout", timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(options.pool_size).unwrap_or(u32::MAX))
            .min_connections(0)
            .acquire_timeout(options.connect_timeout)
            // A broken connection shows at its first statement, which is then tried again on
            // another: no ping before each statement.
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        PostgresStore::from_pool(pool, options).await
    }

    /// A store on a pool the application already has (its `statement_timeout` and
    /// `application_name` are the pool's; `options.pool_size` is ignored), checked and with
    /// the table created as by [`connect_with`](PostgresStore::connect_with). The waiters'
    /// listener opens one more connection with the pool's options.
    pub async fn from_pool(pool: PgPool, options: PostgresOptions) -> Result<PostgresStore, Error> {
        let table = options.checked()?;
        let connect = pool.connect_options();
        let describe = describe(&connect, &table);
        let sql = Arc::new(Statements::new(&table, options.pooler, options.claim_order));
        let store = PostgresStore {
            shared: Arc::new(Shared {
                hub: Hub::new(
                    (*connect).clone(),
                    options.connect_timeout,
                    table.channel(),
                    !options.pooler,
                ),
                _reaper: Reaper::start(
                    pool.clone(),
                    sql.clone(),
                    options.reaper_interval,
                    options.reaper_batch,
                    options.statement_timeout,
                ),
                pool_size: pool.options().get_max_connections(),
                pool,
                sql,
                token_sql: TokenStatements::new(&TokenTable::of(&table), options.pooler),
                token_table: TokenTable::of(&table),
                table: table.clone(),
                describe,
                connect_timeout: options.connect_timeout,
                statement_timeout: options.statement_timeout,
                suspect: AtomicBool::new(false),
            }),
        };
        let prepared = tokio::time::timeout(
            options.connect_timeout,
            table::prepare(
                &store.shared.pool,
                &store.shared.describe,
                &table,
                options.create_table,
                options.pooler,
            ),
        )
        .await;
        match prepared {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Connect {
                    store: store.shared.describe.clone(),
                    source: failure::timed_out(
                        &store.shared.describe,
                        options.connect_timeout,
                        "connect_timeout",
                    ),
                });
            }
        }
        if options.create_table {
            // Without it, token operations fail saying what to create; calls are unaffected.
            let created = sqlx::raw_sql(sqlx::AssertSqlSafe(
                store.shared.token_table.migration().to_owned(),
            ))
            .execute(&store.shared.pool);
            match tokio::time::timeout(options.connect_timeout, created).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "idem could not create the PostgreSQL table of tokens; idem::tokens will fail until it exists");
                }
                Err(_) => {
                    tracing::warn!(
                        "idem timed out creating the PostgreSQL table of tokens; idem::tokens will fail until it exists"
                    );
                }
            }
        }
        Ok(store)
    }

    /// The pool the store runs its statements on.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// A connection of the pool. After a broken connection, first checks that the server
    /// accepts connections at all.
    async fn lend(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let shared = &self.shared;
        if shared.suspect.load(Ordering::Acquire) {
            let options = shared.pool.connect_options();
            match tokio::time::timeout(shared.connect_timeout, PgConnection::connect_with(&options))
                .await
            {
                Ok(Ok(probe)) => {
                    shared.suspect.store(false, Ordering::Release);
                    tokio::spawn(async move {
                        let _ = probe.close().await;
                    });
                }
                Ok(Err(error)) => return Err(failure::store_error(error, &shared.describe)),
                Err(_) => {
                    return Err(failure::timed_out(
                        &shared.describe,
                        shared.connect_timeout,
                        "connect_timeout",
                    ));
                }
            }
        }
        match tokio::time::timeout(shared.connect_timeout, shared.pool.acquire()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => {
                if failure::breaks_connection(&error) {
                    shared.suspect.store(true, Ordering::Release);
                }
                Err(failure::store_error(error, &shared.describe))
            }
            Err(_) => Err(failure::timed_out(
                &shared.describe,
                shared.connect_timeout,
                "connect_timeout",
            )),
        }
    }

    /// The result of one attempt of an operation on `conn`; `None` to try again on another
    /// connection (this one broke, and the statement did not run or its effect is fenced).
    fn settle<T>(
        &self,
        conn: &mut PoolConnection<Postgres>,
        answer: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
        tries: u32,
    ) -> Option<Result<T, StoreError>> {
        let shared = &self.shared;
        match answer {
            Ok(Ok(value)) => Some(Ok(value)),
            Ok(Err(error)) => {
                if failure::breaks_connection(&error) {
                    conn.close_on_drop();
                    shared.suspect.store(true, Ordering::Release);
                    // Every pooled connection may be stale after a restart: try each once.
                    if tries <= shared.pool_size {
                        return None;
                    }
                }
                Some(Err(failure::store_error(error, &shared.describe)))
            }
            Err(_) => {
                // The statement may still be running, or the server may be gone without a
                // word: the connection is not reused.
                conn.close_on_drop();
                Some(Err(failure::timed_out(
                    &shared.describe,
                    shared.statement_timeout,
                    "statement_timeout",
                )))
            }
        }
    }

    /// Waits at most `timeout` for the transaction that holds `key`'s row lock to end, on the
    /// lock itself: it returns as that transaction commits or rolls back. One wait stays within
    /// the statement timeout; the engine asks again for what is left of the call's wait.
    async fn lock_wait(&self, key: &str, timeout: Duration) -> Result<(), StoreError> {
        let sql = &self.shared.sql;
        let wait = timeout.min(self.shared.statement_timeout / 2);
        on_connection!(self, |conn| sql::lock_wait(conn, sql, key, wait))
    }

    /// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
    async fn lease_left(&self, key: &str, holder: &Claim) -> Result<Option<Duration>, StoreError> {
        let sql = &self.shared.sql;
        on_connection!(self, |conn| sql::lease_left(conn, sql, key, holder))
    }
}

/// `postgres://user@host:port/db (schema.table)`: the store without its password.
fn describe(options: &PgConnectOptions, table: &Table) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_owned(),
    };
    format!(
        "postgres://{}@{host}:{}/{} ({})",
        options.get_username(),
        options.get_port(),
        options.get_database().unwrap_or_default(),
        table.qualified()
    )
}

/// Refuses a key PostgreSQL `text` cannot hold.
fn check_key(key: &str) -> Result<(), StoreError> {
    if key.contains('\0') {
        return Err(StoreError::new(
            crate::error::StoreErrorKind::Other,
            "a key with a NUL character cannot be stored in PostgreSQL; remove it from the prefix or scope",
        ));
    }
    Ok(())
}

/// `record` as a claim's answer: `None` (the key is ours) when it is `claim`'s own, found when
/// a retry follows an attempt whose answer was lost after it was applied.
fn own_or(record: Record, claim: &Claim) -> Option<Record> {
    match record {
        Record::InProgress(found) if found == *claim => None,
        record => Some(record),
    }
}

impl Store for PostgresStore {
    async fn claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<Option<Record>, StoreError> {
        check_key(key)?;
        let sql = &self.shared.sql;
        let order = &sql.order;
        let first = order.first();
        let one_statement = first == First::OneStatement;
        // Reading first (while replays clearly outnumber first calls, `order.rs`): a key that
        // holds a live record is answered by the bare read; without one, the upsert follows.
        let mut read = first == First::Read;
        for _ in 0..UNSEEN_RETRIES {
            if read {
                let found = on_connection!(self, |conn| sql::live(conn, sql, key))?;
                if let Some(record) = found {
                    order.found(true);
                    return Ok(own_or(record, claim));
                }
            }
            let claimed = on_connection!(self, |conn| sql::claim(
                conn,
                sql,
                one_statement,
                key,
                claim,
                lease,
                CLAIM_LOCK_WAIT
            ))?;
            match claimed {
                Claimed::Held => {
                    order.found(false);
                    return Ok(None);
                }
                // In progress in a transaction that has not committed: waiting for it is
                // `wait`'s job, bounded by the call's own wait, never a store failure.
                Claimed::Locked => {
                    order.found(true);
                    return Ok(Some(Record::InProgress(Claim {
                        token: UNSEEN_HOLDER,
                        fingerprint: None,
                    })));
                }
                Claimed::Found(record) => {
                    order.found(true);
                    return Ok(own_or(record, claim));
                }
                // The upsert met a live row, which it cannot return: read it (gone by then, it
                // expired or was released in between, and the upsert is tried again).
                Claimed::Unseen if !one_statement => read = true,
                // A claim committed after the one statement's snapshot: asking again sees it.
                Claimed::Unseen => tokio::task::yield_now().await,
            }
        }
        Err(StoreError::new(
            crate::error::StoreErrorKind::Protocol,
            format!(
                "PostgreSQL at {} kept answering the claim of a key with no row",
                self.shared.describe
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
        check_key(key)?;
        let sql = &self.shared.sql;
        let tag = listen::tag(key);
        let held = on_connection!(self, |conn| sql::complete(
            conn, sql, key, claim, payload, ttl, &tag
        ))?;
        if held {
            return Ok(Fence::Held);
        }
        // Rare (the lease was lost): look whether an earlier attempt of this completion
        // was applied before its connection broke.
        let ours = on_connection!(self, |conn| sql::completed_by(conn, sql, key, claim))?;
        Ok(Fence::from_held(ours))
    }

    async fn release(&self, key: &str, claim: &Claim) -> Result<Fence, StoreError> {
        check_key(key)?;
        let sql = &self.shared.sql;
        let tag = listen::tag(key);
        let held = on_connection!(self, |conn| sql::release(conn, sql, key, claim, &tag))?;
        Ok(Fence::from_held(held))
    }

    async fn renew(&self, key: &str, claim: &Claim, lease: Duration) -> Result<Fence, StoreError> {
        check_key(key)?;
        let sql = &self.shared.sql;
        let held = on_connection!(self, |conn| sql::renew(conn, sql, key, claim, lease))?;
        Ok(Fence::from_held(held))
    }

    async fn wait(&self, key: &str, holder: &Claim, timeout: Duration) -> Result<(), StoreError> {
        check_key(key)?;
        if holder.token == UNSEEN_HOLDER {
            return self.lock_wait(key, timeout).await;
        }
        let deadline = Instant::now() + timeout;
        let ticket = self.shared.hub.register(listen::tag(key));
        let woken = ticket.wake().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // Registered first, then look: a completion after the look wakes us.
        let Some(left) = self.lease_left(key, holder).await? else {
            return Ok(());
        };
        // A holder that crashed sends nothing: its lease ending is the last wake-up.
        let until = deadline.min(Instant::now() + left + LEASE_GRACE);
        // While the listener is up, a notification wakes us; while it starts, its being up
        // or failed does (or `POLL_MAX`, if it is slow); else nothing may wake us: look again
        // and again, each sleep twice the last up to `POLL_MAX`. Every sleep and look ends at
        // `until` at the latest.
        let mut pause = POLL_FIRST;
        loop {
            let next = match self.shared.hub.listening() {
                Listening::Up => until,
                Listening::Starting => until.min(Instant::now() + POLL_MAX),
                Listening::Down => {
                    let next = until.min(Instant::now() + pause);
                    pause = (pause * 2).min(POLL_MAX);
                    next
                }
            };
            if tokio::time::timeout_at(next, woken.as_mut()).await.is_ok() || next >= until {
                return Ok(());
            }
            match tokio::time::timeout_at(until, self.lease_left(key, holder)).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Err(_) => return Ok(()),
                Ok(Err(error)) => return Err(error),
            }
        }
    }

    /// One `SELECT` of the live row; the fingerprint of a completed record is the row's
    /// `fingerprint` column.
    async fn inspect(&self, key: &str) -> Result<Inspection, StoreError> {
        check_key(key)?;
        let sql = &self.shared.sql;
        on_connection!(self, |conn| sql::inspect(conn, sql, key))
    }

    /// One `DELETE` that notifies the waiters of the key.
    async fn forget(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let sql = &self.shared.sql;
        let tag = listen::tag(key);
        on_connection!(self, |conn| sql::forget(conn, sql, key, &tag))
    }

    /// One statement: at most `limit + 1` live rows of the prefix's key range (an index range
    /// of the primary key), the first `limit` counted by state; and one more that counts at
    /// most `limit` live tokens. [`Stats::store_keys`] is the
    /// planner's estimate of the table's rows (`pg_class.reltuples`, expired rows the reaper
    /// has not deleted yet included), `None` before the table was first analyzed.
    async fn stats(&self, prefix: &str, limit: usize) -> Result<Stats, StoreError> {
        check_key(prefix)?;
        let sql = &self.shared.sql;
        let mut stats = on_connection!(self, |conn| sql::stats(conn, sql, prefix, limit))?;
        // A second statement, on the tokens' table (none counted when it does not exist).
        let token_sql = &self.shared.token_sql;
        let counted = on_connection!(self, |conn| async {
            match tokens::count(&mut *conn, token_sql, prefix, limit).await {
                Err(error) if tokens::no_table(&error) => Ok((0, 0)),
                other => other,
            }
        })?;
        tokens::add(&mut stats, counted);
        Ok(stats)
    }

    /// One statement on the tokens' table; see `tokens.rs`.
    async fn issue_token(
        &self,
        token: &TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> Result<Issue, StoreError> {
        check_key(token.record())?;
        let sql = &self.shared.token_sql;
        let issued = on_connection!(self, |conn| async {
            match tokens::issue(&mut *conn, sql, token, ttl, max_live).await {
                Err(error) if tokens::no_table(&error) => Ok(None),
                other => other.map(Some),
            }
        });
        issued?.ok_or_else(|| self.shared.token_table.missing(&self.shared.describe))
    }

    /// One statement on the tokens' table; see `tokens.rs`.
    async fn redeem_token(
        &self,
        token: &TokenKey,
        keep: Duration,
    ) -> Result<Redemption, StoreError> {
        check_key(token.record())?;
        let sql = &self.shared.token_sql;
        let redeemed = on_connection!(self, |conn| async {
            match tokens::redeem(&mut *conn, sql, token, keep).await {
                Err(error) if tokens::no_table(&error) => Ok(None),
                other => other.map(Some),
            }
        });
        redeemed?.ok_or_else(|| self.shared.token_table.missing(&self.shared.describe))
    }

    fn describe(&self) -> String {
        self.shared.describe.clone()
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("store", &self.shared.describe)
            .field("pool_size", &self.shared.pool_size)
            .field("statement_timeout", &self.shared.statement_timeout)
            .finish_non_exhaustive()
    }
}
