//! The store conformance suite of `idem::testing`, unchanged, against a `RedisStore` on an
//! application's `deadpool_redis::Pool` (`RedisStore::from_deadpool`): each case on a
//! `redis-server` of its own, once with deadpool-redis's default pool size and once with a pool
//! of one connection, which the holder of a key, its waiters and concurrent calls share.

mod support;

use support::redis::RedisServer;

/// A store on a pool of `max_size` connections (deadpool's default size when `None`).
async fn deadpool_store(max_size: Option<usize>) -> (idem::RedisStore, RedisServer) {
    let server = RedisServer::start();
    let mut config = deadpool_redis::Config::from_url(server.url());
    if let Some(max_size) = max_size {
        config.pool = Some(deadpool_redis::PoolConfig::new(max_size));
    }
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("a pool for the test's redis-server");
    let store = idem::RedisStore::from_deadpool(pool)
        .await
        .expect("a store on the pool");
    (store, server)
}

idem::conformance_tests!(redis_deadpool, deadpool_store(None));

idem::conformance_tests!(redis_deadpool_of_one, deadpool_store(Some(1)));
