//! [`MySqlOptions`]: how a [`MySqlStore`](super::MySqlStore) uses its database, set in code or
//! read from an application's [`Config`].

use std::time::Duration;

use super::table::Table;
use crate::config::Config;
use crate::error::Error;
use crate::store::ClaimOrder;

/// The settings of a [`MySqlStore`](super::MySqlStore): its table, connections, timeouts,
/// waiters and reaper. The URL is given beside them
/// ([`MySqlStore::connect_with`](super::MySqlStore::connect_with)). `From<&Config>` takes
/// `pool_size`, `connect_timeout` and `command_timeout` (as the `statement_timeout`) from a
/// [`Config`]; `Default` is `From<&Config::default()>`.
///
/// ```
/// # use idem_runtime as idem;
/// # use std::time::Duration;
/// let options = idem::MySqlOptions::default()
///     .table("idempotency")
///     .create_table(false)
///     .statement_timeout(Duration::from_millis(500));
/// assert!(options.migration().unwrap().contains("`idempotency`"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MySqlOptions {
    /// The table, in the URL's database; `idem_records` by default.
    pub table: String,
    /// Whether connecting creates the table when it is missing (the default); when off, a
    /// missing table is [`Error::Config`] naming the SQL to run.
    pub create_table: bool,
    /// How many connections the store keeps (each carries one statement at a time); 10 by
    /// default.
    pub pool_size: usize,
    /// How long making a connection (or waiting for a free one) may take; 5 s by default.
    pub connect_timeout: Duration,
    /// How long one statement may take, measured by the store (a statement past it is
    /// abandoned with its connection); 2 s by default.
    pub statement_timeout: Duration,
    /// How often a waiter looks at the key again while the call it waits for runs in another
    /// process (or through another store); 25 ms by default. A waiter of a call of this store
    /// is woken when the call ends, without polling. MySQL has no notifications.
    pub poll_interval: Duration,
    /// How often the reaper deletes expired rows; `None` turns it off (expired rows are
    /// absent all the same, they only take space). 60 s by default.
    pub reaper_interval: Option<Duration>,
    /// How many expired rows one reaper statement deletes at most; 1000 by default.
    pub reaper_batch: u32,
    /// Whether a claim reads the key or inserts the claim first; learnt from the store's
    /// claims by default ([`ClaimOrder::Learnt`]).
    pub claim_order: ClaimOrder,
}

/// The connections a store keeps when [`Config::pool_size`](Config#structfield.pool_size)
/// sets none.
const POOL_SIZE: usize = 10;

impl Default for MySqlOptions {
    fn default() -> Self {
        MySqlOptions::from(&Config::default())
    }
}

impl From<&Config> for MySqlOptions {
    /// A `Config`'s `pool_size` (10 when unset), `connect_timeout`, and `command_timeout` as
    /// the `statement_timeout`; the rest are the store's own defaults.
    fn from(config: &Config) -> Self {
        MySqlOptions {
            table: "idem_records".to_owned(),
            create_table: true,
            pool_size: config.pool_size.unwrap_or(POOL_SIZE),
            connect_timeout: config.connect_timeout,
            statement_timeout: config.command_timeout,
            poll_interval: Duration::from_millis(25),
            reaper_interval: Some(Duration::from_secs(60)),
            reaper_batch: 1000,
            claim_order: ClaimOrder::Learnt,
        }
    }
}

impl MySqlOptions {
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

    /// Whether a claim reads the key or inserts the claim first (see [`ClaimOrder`]).
    pub fn claim_order(mut self, order: ClaimOrder) -> Self {
        self.claim_order = order;
        self
    }

    /// The SQL that creates the table (`CREATE TABLE IF NOT EXISTS …`), to put in an
    /// application's own migrations; [`MIGRATION`](super::MIGRATION) for the default name. An
    /// error names a table name that is not valid.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let sql = idem::MySqlOptions::default().table("billing_keys").migration().unwrap();
    /// assert!(sql.contains("CREATE TABLE IF NOT EXISTS `billing_keys`"));
    /// assert!(idem::MySqlOptions::default().table("").migration().is_err());
    /// ```
    pub fn migration(&self) -> Result<String, Error> {
        Ok(self.checked()?.migration())
    }

    /// Checks every value; the table's name, checked.
    pub(super) fn checked(&self) -> Result<Table, Error> {
        if self.pool_size == 0 || self.reaper_batch == 0 {
            return Err(Error::Config(
                "the MySQL pool_size and reaper_batch must be greater than 0".into(),
            ));
        }
        if self.connect_timeout.is_zero()
            || self.statement_timeout.is_zero()
            || self.poll_interval.is_zero()
        {
            return Err(Error::Config(
                "the MySQL connect_timeout, statement_timeout and poll_interval must be greater than 0"
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
            MySqlOptions::default().pool_size(0),
            MySqlOptions::default().reaper_batch(0),
            MySqlOptions::default().statement_timeout(Duration::ZERO),
            MySqlOptions::default().poll_interval(Duration::ZERO),
            MySqlOptions::default().table(""),
        ] {
            assert!(
                matches!(options.checked(), Err(Error::Config(_))),
                "{options:?}"
            );
        }
        assert!(MySqlOptions::default().checked().is_ok());
    }
}
