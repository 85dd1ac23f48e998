//! How a [`RedisStore`] is made: from options, a URL, an application's client or pool, then
//! checked (see `checks.rs`) before its first call.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::error::Error;

use super::command::{Replicas, Shared};
use super::connections::{ConnectionSource, Connections};
#[cfg(feature = "deadpool-redis")]
use super::pooled;
use super::runtimes::ConnectRuntime;
use super::servers::{Target, Timeouts};
use super::waiters::Hub;
use super::{CLUSTER_POOL, NODE_POOL, RedisOptions, RedisStore, scripts};

/// What a store is connected to, for its scripts and its messages.
pub(super) struct Deployment {
    cluster: bool,
    /// The URL without the password, or what the connections come from.
    url: String,
    /// How many connections carry its commands.
    pool_size: usize,
}

/// The `min_replicas` of `options`, if any.
pub(super) fn replicas(options: &RedisOptions) -> Option<Replicas> {
    (options.min_replicas > 0).then_some(Replicas {
        count: options.min_replicas,
        timeout: options.replica_timeout,
    })
}

impl RedisStore {
    /// Connects to the Redis (or Redis Cluster) that `config` names (its `store` URL), with
    /// the Redis settings of `config` (`RedisOptions::from(config)`), and checks that it
    /// answers: what [`init`](crate::init) does for `IDEM_STORE=redis://…`.
    ///
    /// Fails as [`connect_with`](RedisStore::connect_with) does.
    pub async fn connect(config: &Config) -> Result<RedisStore, Error> {
        RedisStore::connect_with(&config.store, RedisOptions::from(config)).await
    }

    /// Connects to the Redis (or Redis Cluster) at `url` with `options` and checks that it
    /// answers.
    ///
    /// Fails with [`Error::Config`] for a URL that does not parse or names no Redis, for
    /// credentials the server refuses, for a server older than Redis 7.0, for a URL of the
    /// wrong kind (`redis://` naming a Cluster node, `redis+cluster://` naming a server that is
    /// not in a Cluster), and for a server that may evict records unless
    /// [`allow_eviction`](RedisOptions::allow_eviction) accepts it; with [`Error::Connect`] when
    /// the server cannot be reached or does not answer within `connect_timeout`.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<RedisStore, Error> {
        let target = Target::parse(url)?;
        RedisStore::start(target, &options).await
    }

    /// Connects to the Redis at `url` with the default options; see
    /// [`connect_with`](RedisStore::connect_with).
    pub async fn open(url: &str) -> Result<RedisStore, Error> {
        RedisStore::connect_with(url, RedisOptions::default()).await
    }

    /// A store on the server an application's own `redis::Client` names, with its address,
    /// credentials and TLS settings; `options` gives the rest. The store makes its own
    /// connections from it, speaking RESP3 (for the pushes that wake waiting calls).
    pub async fn from_client(
        client: &redis::Client,
        options: RedisOptions,
    ) -> Result<RedisStore, Error> {
        let target = Target::from_client(client)?;
        RedisStore::start(target, &options).await
    }

    /// A store on the Redis Cluster an application's own `ClusterClient` reaches; `options`
    /// gives the rest. Waiting calls are woken by sharded pub/sub when the client speaks RESP3
    /// (`ClusterClientBuilder::use_protocol`), and look again every 50 ms otherwise. The
    /// client's own retry settings apply.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub async fn from_cluster_client(
        client: redis::cluster::ClusterClient,
        options: RedisOptions,
    ) -> Result<RedisStore, Error> {
        let target = Target::from_cluster_client(client);
        RedisStore::start(target, &options).await
    }

    /// A store on an application's own [`deadpool_redis::Pool`] (deadpool-redis 0.23), with the
    /// default options: see [`from_deadpool_with`](RedisStore::from_deadpool_with).
    ///
    /// ```no_run
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // The application's pool, from deadpool-redis's own configuration (a URL here; its
    /// // `connection` and `pool` fields, or a config file through its `serde` feature, work
    /// // the same). A runtime lets the pool apply its timeouts.
    /// let config = deadpool_redis::Config::from_url("redis://127.0.0.1:6379/0");
    /// let pool = config.create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    ///
    /// // idem checks connections out of the same pool, next to the application's own commands.
    /// let store = idem::RedisStore::from_deadpool(pool.clone()).await?;
    /// // Installed once at start-up, it serves every call of the process:
    /// idem::install(idem::Idem::with_settings(store, &idem::Config::default()))?;
    /// let outcome = idem::Call::new("billing::invoice", "inv-42")
    ///     .run(async { 42_u64 })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "deadpool-redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "deadpool-redis")))]
    pub async fn from_deadpool(pool: deadpool_redis::Pool) -> Result<RedisStore, Error> {
        RedisStore::from_deadpool_with(pool, RedisOptions::default()).await
    }

    /// A store on an application's own [`deadpool_redis::Pool`] (deadpool-redis 0.23, on the
    /// same redis-rs as idem), one server: each operation checks a connection out of the pool,
    /// sends its command (with the same scripts, fencing and `min_replicas` as a store of its own
    /// connections) and gives the connection back. `options` gives the timeouts,
    /// `min_replicas` and `allow_eviction`; its `pool_size` is not used (the pool's
    /// `max_size` bounds the operations in flight). Like [`connect`](RedisStore::connect), it
    /// checks the server on a pooled connection before it returns (Redis 7.0 or later, not a
    /// Cluster node, no eviction unless `allow_eviction`), and loads the scripts.
    ///
    /// The settings of an application's [`Config`] apply with
    /// `RedisOptions::from(&config)`:
    ///
    /// ```no_run
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use idem::store::redis::RedisOptions;
    ///
    /// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379/0")
    ///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    /// let config = idem::Config::from_env()?;
    /// let store = idem::RedisStore::from_deadpool_with(pool, RedisOptions::from(&config)).await?;
    /// // Every call of the process on it, with the other settings of `config`:
    /// idem::install(idem::Idem::with_settings(store, &config))?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// What differs from the store's own connections:
    ///
    /// - deadpool-redis checks every connection it lends with `UNWATCH` and `PING`, pipelined:
    ///   one more round trip per store operation, so a replay costs two and a first call four.
    /// - A call waiting for another with the same key looks at the key again every 50 ms
    ///   (one checkout each) instead of being woken by pub/sub: no connection is held while it
    ///   waits, so a pool of one connection serves the holder and its waiters alike.
    /// - Operations in flight are bounded by the pool's `max_size` (the store's own connections
    ///   pipeline any number), and a checkout waits for a free connection within the pool's
    ///   wait timeout and `connect_timeout`; when none frees up the call fails with
    ///   [`StoreErrorKind::Timeout`](crate::StoreErrorKind::Timeout), saying the pool is
    ///   exhausted. A closed pool is [`StoreErrorKind::Unavailable`](crate::StoreErrorKind::Unavailable).
    /// - The pool's connections are made and driven on the runtime of the call that checks them
    ///   out (deadpool-redis's choice), not moved to idem's own threads.
    ///
    /// Fails with [`Error::Config`] for a server that is refused as [`connect`](RedisStore::connect)
    /// refuses it, and for a pool that has timeouts but no runtime; with [`Error::Connect`] when
    /// no connection can be checked out and answer within `connect_timeout`.
    #[cfg(feature = "deadpool-redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "deadpool-redis")))]
    pub async fn from_deadpool_with(
        pool: deadpool_redis::Pool,
        options: RedisOptions,
    ) -> Result<RedisStore, Error> {
        let pool = pooled::Pooled::new(pool, options.connect_timeout);
        let pool_size = pool.max_size();
        let store = RedisStore::assemble(
            ConnectionSource::Pool(pool),
            None,
            Deployment {
                cluster: false,
                url: pooled::DESCRIBED.to_owned(),
                pool_size,
            },
            &options,
        );
        store
            .check(options.connect_timeout, options.allow_eviction)
            .await?;
        Ok(store)
    }

    pub(super) async fn start(target: Target, options: &RedisOptions) -> Result<RedisStore, Error> {
        if target.tls {
            tls_ready(&target.url)?;
        }
        let replicas = replicas(options);
        let timeouts = Timeouts {
            connect: options.connect_timeout,
            attempt: options.command_timeout + replicas.map_or(Duration::ZERO, |r| r.timeout),
        };
        let url = target.url;
        let servers = Arc::new(target.servers);
        let cluster = servers.is_cluster();
        let pool_size = options
            .pool_size
            .unwrap_or(if cluster { CLUSTER_POOL } else { NODE_POOL });
        let home = Arc::new(ConnectRuntime::default());
        let links = Connections::new(servers.clone(), home.clone(), timeouts, pool_size, cluster);
        let hub = Hub::new(servers, home, timeouts, options.command_timeout);
        let store = RedisStore::assemble(
            ConnectionSource::Own(links),
            Some(Arc::new(hub)),
            Deployment {
                cluster,
                url,
                pool_size,
            },
            options,
        );
        store
            .check(options.connect_timeout, options.allow_eviction)
            .await?;
        Ok(store)
    }

    /// A store whose operations take their connections from `lender`.
    pub(super) fn assemble(
        lender: ConnectionSource,
        hub: Option<Arc<Hub>>,
        deployment: Deployment,
        options: &RedisOptions,
    ) -> RedisStore {
        RedisStore {
            shared: Arc::new(Shared {
                lender,
                hub,
                scripts: if deployment.cluster {
                    &scripts::CLUSTER
                } else {
                    &scripts::NODE
                },
                cluster: deployment.cluster,
                url: deployment.url,
                pool_size: deployment.pool_size,
                command_timeout: options.command_timeout,
                replicas: replicas(options),
            }),
        }
    }
}

/// redis-rs builds its TLS configuration on the process-wide rustls provider: install ring
/// unless the application chose one.
#[cfg(feature = "redis-tls")]
fn tls_ready(_url: &str) -> Result<(), Error> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; either way there is one afterwards.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Ok(())
}

#[cfg(not(feature = "redis-tls"))]
fn tls_ready(url: &str) -> Result<(), Error> {
    Err(super::servers::needs_tls(url))
}
