//! [`RedisOptions`]: how a [`RedisStore`](super::RedisStore) connects and behaves, set in code
//! or read from an application's [`Config`].

use std::time::Duration;

use crate::config::Config;

/// The settings of a [`RedisStore`](super::RedisStore): connections, timeouts and durability.
/// The URL is given beside them ([`RedisStore::connect_with`](super::RedisStore::connect_with)).
/// Built in code from [`RedisOptions::default()`], or from a [`Config`]
/// (`RedisOptions::from(&config)`, what [`RedisStore::connect`](super::RedisStore::connect)
/// does).
///
/// ```
/// # use idem_runtime as idem;
/// use std::time::Duration;
/// use idem::RedisOptions;
///
/// let options = RedisOptions::default()
///     .command_timeout(Duration::from_millis(500))
///     .min_replicas(1);
/// let config = idem::Config::default()
///     .command_timeout(Duration::from_millis(500))
///     .min_replicas(1);
/// assert_eq!(RedisOptions::from(&config), options);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    pub(super) pool_size: Option<usize>,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    pub(super) min_replicas: usize,
    pub(super) replica_timeout: Duration,
    pub(super) allow_eviction: bool,
}

/// The defaults are those of [`Config::default()`], where they are written.
impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions::from(&Config::default())
    }
}

/// The Redis settings of `config`: `pool_size`, the timeouts, `min_replicas`,
/// `replica_timeout` and `allow_eviction`. Its URL is not part of them.
impl From<&Config> for RedisOptions {
    fn from(config: &Config) -> Self {
        RedisOptions {
            pool_size: config.pool_size,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            min_replicas: config.min_replicas,
            replica_timeout: config.replica_timeout,
            allow_eviction: config.allow_eviction,
        }
    }
}

impl RedisOptions {
    /// How many connections to keep: by default 1 to one server (multiplexed, shared by every
    /// call) and 16 to a Cluster (each carrying one operation at a time).
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = Some(connections);
        self
    }

    /// How long making a connection may take (default 5s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may take (default 2s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How many replicas must acknowledge a claim or a result (`WAIT`, in the same round
    /// trip); 0, the default, does not wait. See [`Config::min_replicas`].
    pub fn min_replicas(mut self, replicas: usize) -> Self {
        self.min_replicas = replicas;
        self
    }

    /// How long a write waits for [`min_replicas`](Self::min_replicas) (default 1s).
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// Accept a server that may evict records (`maxmemory` with a policy other than
    /// `noeviction`); refused by default. See [`Config::allow_eviction`].
    pub fn allow_eviction(mut self, allow: bool) -> Self {
        self.allow_eviction = allow;
        self
    }
}
