//! The store conformance suite of `idem::testing`, unchanged, against `RedisStore` on a Redis
//! Cluster of three masters: each case on a cluster of its own.

mod support;

use support::cluster::RedisCluster;

async fn cluster_store() -> (idem::RedisStore, RedisCluster) {
    let cluster = RedisCluster::start(3, 0);
    let store = idem::RedisStore::open(&cluster.url())
        .await
        .expect("connect to the test's Redis Cluster");
    (store, cluster)
}

idem::conformance_tests!(cluster, cluster_store());
