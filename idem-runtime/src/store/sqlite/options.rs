//! [`SqliteOptions`]: how a [`SqliteStore`](super::SqliteStore) uses its database file.

use std::time::Duration;

use super::table::Table;
use crate::config::Config;
use crate::error::Error;

/// The settings of a [`SqliteStore`](super::SqliteStore). `From<&Config>` takes
/// `pool_size`, `connect_timeout` and `command_timeout` (as `busy_timeout`) from a
/// [`Config`]; `Default` is `From<&Config::default()>`.
///
/// ```
/// # use idem_runtime as idem;
/// # use std::time::Duration;
/// let options = idem::SqliteOptions::default()
///     .table("idempotency")
///     .create_table(false)
///     .busy_timeout(Duration::from_millis(500));
/// assert!(options.migration().unwrap().contains(r#""idempotency""#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// The table; `idem_records` by default.
    pub table: String,
    /// Whether opening the store creates the table and its index when they are missing (the
    /// default); when off, a missing table is [`Error::Config`](Error::Config) naming
    /// the SQL to run.
    pub create_table: bool,
    /// How many connections the store reads through (claims that find a record, waiters,
    /// operators); 4 by default. Writes go through one more connection of the store's own,
    /// so that the writes of this process queue for it instead of for SQLite's lock. An
    /// in-memory database (`sqlite::memory:`) has one connection in all.
    pub pool_size: usize,
    /// How long opening the file (or waiting for a free connection) may take; 5 s by default.
    pub connect_timeout: Duration,
    /// How long one statement waits for the write lock that another connection holds (another
    /// process, or an application's own transaction on the file) before it fails with a
    /// [`StoreError`](crate::StoreError) of kind [`Timeout`](crate::StoreErrorKind::Timeout):
    /// SQLite's `busy_timeout`; 2 s by default. The store's own writes hold the lock for one
    /// statement only.
    pub busy_timeout: Duration,
    /// Whether every write is on disk before it returns (`PRAGMA synchronous = FULL`, the
    /// default): a stored result then survives a power loss or a crash of the machine. `false`
    /// is `synchronous = NORMAL`, which syncs the write-ahead log at checkpoints only: faster
    /// writes, and a crash of the process still loses nothing, but a power loss can undo the
    /// last results, whose keys then run again.
    pub full_sync: bool,
    /// How often a waiter looks at the key again while the call it waits for runs in another
    /// process (or through another store on the same file); 25 ms by default. A waiter of a
    /// call of this store is woken when the call ends, without polling.
    pub poll_interval: Duration,
    /// How often the reaper deletes expired rows; `None` turns it off (expired rows are
    /// absent all the same, they only take space). 60 s by default.
    pub reaper_interval: Option<Duration>,
    /// How many expired rows one reaper statement deletes at most; 1000 by default.
    pub reaper_batch: u32,
}

/// The read connections of a store whose `Config` leaves `pool_size` unset.
const POOL_SIZE: usize = 4;

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions::from(&Config::default())
    }
}

impl From<&Config> for SqliteOptions {
    /// A `Config`'s `pool_size` (4 when unset), `connect_timeout`, and `command_timeout` as
    /// the `busy_timeout`; the rest are the store's own defaults.
    fn from(config: &Config) -> Self {
        SqliteOptions {
            table: "idem_records".to_owned(),
            create_table: true,
            pool_size: config.pool_size.unwrap_or(POOL_SIZE),
            connect_timeout: config.connect_timeout,
            busy_timeout: config.command_timeout,
            full_sync: true,
            poll_interval: Duration::from_millis(25),
            reaper_interval: Some(Duration::from_secs(60)),
            reaper_batch: 1000,
        }
    }
}

impl SqliteOptions {
    /// The table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Whether opening the store creates the table when it is missing.
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// How many connections the store reads through (at least one).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long opening the file may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one statement waits for another connection's write lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Whether every write is on disk before it returns (`synchronous = FULL`).
    pub fn full_sync(mut self, on: bool) -> Self {
        self.full_sync = on;
        self
    }

    /// How often a waiter of a call in another process looks again.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
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

    /// The SQL that creates the table and its index (`CREATE TABLE IF NOT EXISTS …`), to put
    /// in an application's own migrations; [`MIGRATION`](super::MIGRATION) for the default
    /// name. An error names a table name that is not valid.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let sql = idem::SqliteOptions::default().table("billing_keys").migration().unwrap();
    /// assert!(sql.contains(r#"CREATE INDEX IF NOT EXISTS "billing_keys_expires_at""#));
    /// assert!(idem::SqliteOptions::default().table("sqlite_x").migration().is_err());
    /// ```
    pub fn migration(&self) -> Result<String, Error> {
        Ok(self.checked()?.migration())
    }

    /// Checks every value; the table's name, checked.
    pub(super) fn checked(&self) -> Result<Table, Error> {
        if self.pool_size == 0 || self.reaper_batch == 0 {
            return Err(Error::Config(
                "the SQLite pool_size and reaper_batch must be greater than 0".into(),
            ));
        }
        if self.connect_timeout.is_zero()
            || self.busy_timeout.is_zero()
            || self.poll_interval.is_zero()
        {
            return Err(Error::Config(
                "the SQLite connect_timeout, busy_timeout and poll_interval must be greater than 0"
                    .into(),
            ));
        }
        Table::new(&self.table).map_err(Error::Config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_are_refused() {
        for options in [
            SqliteOptions::default().pool_size(0),
            SqliteOptions::default().reaper_batch(0),
            SqliteOptions::default().busy_timeout(Duration::ZERO),
            SqliteOptions::default().poll_interval(Duration::ZERO),
            SqliteOptions::default().table(""),
        ] {
            assert!(
                matches!(options.checked(), Err(Error::Config(_))),
                "{options:?}"
            );
        }
        assert!(SqliteOptions::default().checked().is_ok());
    }
}
