//! The store conformance suite of `idem::testing`, unchanged, against `RedisStore`: each case
//! on a `redis-server` of its own.

mod support;

use support::redis::RedisServer;

async fn redis_store() -> (idem::RedisStore, RedisServer) {
    let server = RedisServer::start();
    let store = idem::RedisStore::open(&server.url())
        .await
        .expect("connect to the test's redis-server");
    (store, server)
}

idem::conformance_tests!(redis, redis_store());
