//! [`PostgresOptions`]: how a [`PostgresStore`](super::PostgresStore) uses its database, set in
//! code or read from an application's [`Config`].

use std::time::Duration;

use crate::config::Config;
use crate::error::Error;
use crate::store::ClaimOrder;

use super::table::Table;

/// The settings of a [`PostgresStore`](super::PostgresStore): its table, connections, timeouts
/// and reaper. The URL is given beside them
/// ([`PostgresStore::connect_with`](super::PostgresStore::connect_with)). Built in code from
/// [`PostgresOptions::default()`], or from a [`Config`] (`PostgresOptions::from(&config)`: the
/// `IDEM_PG_*` variables, `IDEM_POOL_SIZE` and the timeouts; what
/// [`PostgresStore::connect`](super::PostgresStore::connect) does).
///
/// ```
/// # use idem_runtime as idem;
/// # use std::time::Duration;
/// let options = idem::PostgresOptions::default()
///     .schema("billing")
///     .table("idempotency")
///     .create_table(false)
///     .statement_timeout(Duration::from_millis(500));
/// assert!(options.migration().unwrap().contains(r#""billing"."idempotency""#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The schema of the table; `public` by default.
    pub schema: String,
    /// The table; `idem_records` by default.
    pub table: String,
    /// Whether connecting creates the table and its index when they are missing (the
    /// default); when off, a missing table is [`Error::Config`] naming
    /// the SQL to run.
    pub create_table: bool,
    /// How many connections the store keeps for its statements (each carries one statement
    /// at a time); 10 by default. The waiters' listener has one more.
    pub pool_size: usize,
    /// How long making a connection (or waiting for a free one) may take; 5 s by default.
    pub connect_timeout: Duration,
    /// How long one statement may take: the connections' `statement_timeout`, and the
    /// store's own limit on each operation; 2 s by default.
    pub statement_timeout: Duration,
    /// How often the reaper deletes expired rows; `None` turns it off (expired rows are
    /// absent all the same, they only take space). 60 s by default.
    pub reaper_interval: Option<Duration>,
    /// How many expired rows one reaper statement deletes at most; 1000 by default.
    pub reaper_batch: u32,
    /// The `application_name` of the store's connections (in `pg_stat_activity`); `idem` by
    /// default.
    pub application_name: String,
    /// Whether the store reaches PostgreSQL through a pooler in transaction mode (PgBouncer's
    /// `pool_mode = transaction`, and managed equivalents), which hands a client a server
    /// connection for one transaction at a time; `false` by default. When on, no statement is
    /// prepared: each is sent with its values written in as literals, by the simple query
    /// protocol (still one round trip; the server parses and plans it every time). The
    /// transactional mode's statements follow the store's setting. The store then never
    /// sends `LISTEN` (a pooler in transaction mode carries none, and would hand the
    /// listening server connection to other clients): its waiters poll. Without it, the
    /// store still checks that a notification reaches its listener before relying on it.
    pub pooler: bool,
    /// Which statement a claim sends first, learnt from the store's own claims by default
    /// ([`ClaimOrder::Learnt`]): the one statement that claims or reads the live row while
    /// claims are a mix; a bare read first while replays and duplicates clearly outnumber
    /// first calls (a replay is then the cheapest statement, a first call one statement more);
    /// a bare upsert first while first calls clearly outnumber the rest (a first call is then
    /// the cheapest claim, a replay one statement more).
    pub claim_order: ClaimOrder,
}

/// The connections a store keeps when [`Config::pool_size`](Config#structfield.pool_size)
/// sets none.
const POOL_SIZE: usize = 10;

/// The defaults: those of [`Config::default()`], where they are written, and the reaper's.
impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions::from(&Config::default())
    }
}

/// The PostgreSQL settings of `config`: `pg_schema`, `pg_table`, `pg_create_table`,
/// `pg_pooler`, `pool_size` (10 when unset), `connect_timeout`, and `command_timeout` as the
/// `statement_timeout`. Its URL is not part of them; the reaper's settings and the
/// `application_name` are the defaults.
impl From<&Config> for PostgresOptions {
    fn from(config: &Config) -> Self {
        PostgresOptions {
            schema: config.pg_schema.clone(),
            table: config.pg_table.clone(),
            create_table: config.pg_create_table,
            pool_size: config.pool_size.unwrap_or(POOL_SIZE),
            connect_timeout: config.connect_timeout,
            statement_timeout: config.command_timeout,
            reaper_interval: Some(Duration::from_secs(60)),
            reaper_batch: 1000,
            application_name: "idem".to_owned(),
            pooler: config.pg_pooler,
            claim_order: ClaimOrder::Learnt,
        }
    }
}

impl PostgresOptions {
    /// The schema of the table.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Whether connecting creates the table when it is missing.
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// How many connections the store keeps (at least one).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long making a connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one statement may take.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How often the reaper runs; `None` turns it off.
    pub fn reaper_interval(mut self, interval: Option<Duration>) -> Self {
        self.reaper_interval = interval;
        self
    }

    /// How many rows one reaper statement deletes at most (at least one).
    pub fn reaper_batch(mut self, rows: u32) -> Self {
        self.reaper_batch = rows;
        self
    }

    /// The `application_name` of the store's connections.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Whether the store reaches PostgreSQL through a transaction-mode pooler (PgBouncer):
    /// see [`pooler`](PostgresOptions#structfield.pooler).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let options = idem::PostgresOptions::default().pooler(true);
    /// assert!(options.pooler);
    /// ```
    pub fn pooler(mut self, pooler: bool) -> Self {
        self.pooler = pooler;
        self
    }

    /// Whether a claim reads the key or claims it first (see [`ClaimOrder`]).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use idem::PostgresOptions;
    /// use idem::store::ClaimOrder;
    ///
    /// let options = PostgresOptions::default().claim_order(ClaimOrder::ReadFirst);
    /// assert_eq!(options.claim_order, ClaimOrder::ReadFirst);
    /// ```
    pub fn claim_order(mut self, order: ClaimOrder) -> Self {
        self.claim_order = order;
        self
    }

    /// The SQL that creates the table and its index (`CREATE TABLE IF NOT EXISTS …`), to put
    /// in an application's own migrations; [`MIGRATION`](super::MIGRATION) for the default
    /// names. An error names a schema or table that is not valid.
    pub fn migration(&self) -> Result<String, Error> {
        Ok(self.checked()?.migration())
    }

    /// Checks every value; the table's names, checked.
    pub(super) fn checked(&self) -> Result<Table, Error> {
        if self.pool_size == 0 || self.reaper_batch == 0 {
            return Err(Error::Config(
                "the PostgreSQL pool_size and reaper_batch must be greater than 0".into(),
            ));
        }
        if self.connect_timeout.is_zero() || self.statement_timeout.is_zero() {
            return Err(Error::Config(
                "the PostgreSQL timeouts must be greater than 0".into(),
            ));
        }
        Table::new(&self.schema, &self.table).map_err(Error::Config)
    }
}
