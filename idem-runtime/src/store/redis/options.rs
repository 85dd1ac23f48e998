//! [`RedisOptions`]: how a [`RedisStore`](super::RedisStore) connects and behaves, set in code
//! or translated from an application's [`Config`](crate::Config).

use std::time::Duration;

/// The settings of a [`RedisStore`](super::RedisStore): its URL, connections, timeouts and
/// durability. Built in code, or from a [`Config`](crate::Config) (`RedisOptions::from(&config)`,
/// which [`RedisStore::connect`](super::RedisStore::connect) accepts as it is).
///
/// ```
/// # use idem_runtime as idem;
/// use std::time::Duration;
/// use idem::store::redis::RedisOptions;
///
/// let options = RedisOptions::new("redis://127.0.0.1:6379/0")
///     .command_timeout(Duration::from_millis(500))
///     .min_replicas(1);
/// assert_eq!(options.url(), "redis://127.0.0.1:6379/0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    pub(super) url: String,
    pub(super) pool_size: Option<usize>,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    pub(super) min_replicas: usize,
    pub(super) replica_timeout: Duration,
    pub(super) allow_eviction: bool,
}

impl RedisOptions {
    /// The defaults for the Redis (or Redis Cluster) at `url`: `redis://…`, `rediss://…`,
    /// `redis+unix://…`, `redis+cluster://h1:p1,h2:p2` or `rediss+cluster://…`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            pool_size: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
            allow_eviction: false,
        }
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

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
    /// trip); 0, the default, does not wait. See [`Config::min_replicas`](crate::Config::min_replicas).
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
    /// `noeviction`); refused by default. See
    /// [`Config::allow_eviction`](crate::Config::allow_eviction).
    pub fn allow_eviction(mut self, allow: bool) -> Self {
        self.allow_eviction = allow;
        self
    }
}

impl From<&str> for RedisOptions {
    fn from(url: &str) -> Self {
        RedisOptions::new(url)
    }
}

impl From<String> for RedisOptions {
    fn from(url: String) -> Self {
        RedisOptions::new(url)
    }
}
