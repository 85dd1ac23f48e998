//! `rediss+cluster://`: `RedisStore` on a Redis Cluster over TLS, with the nodes' certificate
//! checked.
//!
//! This test binary has no libtest harness (`harness = false`): it starts a Redis Cluster of
//! three masters that listen with TLS and talk TLS on the cluster bus (certificates made by
//! `openssl`), checks that a process which does not trust the cluster's CA is refused, then
//! runs a copy of itself that trusts it (`SSL_CERT_FILE`, read by rustls-native-certs at
//! connect time) and uses the store: calls, replays, and a duplicate woken by sharded pub/sub.

mod support;

use std::time::Duration;

use idem::{Call, Config, Error, RedisStore, Status, Store};
use support::cluster::RedisCluster;
use support::workers::Workers;
use tokio::time::Instant;

/// Set in the trusting copy's environment to the `rediss+cluster://` URL.
const TRUSTING: &str = "IDEM_TEST_CLUSTER_TLS_URL";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Ok(url) = std::env::var(TRUSTING) {
        runtime.block_on(trusting(&url));
        return;
    }
    support::harness::run_single(
        "rediss_cluster_checks_the_certificate_and_then_works",
        || rediss_cluster_checks_the_certificate_and_then_works(&runtime),
    );
}

fn rediss_cluster_checks_the_certificate_and_then_works(runtime: &tokio::runtime::Runtime) {
    let cluster = RedisCluster::with_tls(3);
    runtime.block_on(async {
        // This process does not trust the test CA.
        let config = Config::default()
            .store(cluster.tls_url())
            // Room for the cluster client's own retries of the handshake on a loaded machine:
            // the refusal must name the certificate, not the timeout.
            .connect_timeout(Duration::from_secs(8));
        let started = Instant::now();
        match RedisStore::connect(&config).await {
            Err(Error::Connect { source, .. }) => {
                let chain = format!("{source:?}");
                assert!(chain.contains("certificate"), "{chain}");
            }
            other => panic!("an untrusted certificate must be refused, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(9));
    });

    let trusting = Workers::start(
        1,
        [
            (TRUSTING, cluster.tls_url().into()),
            ("SSL_CERT_FILE", cluster.tls_ca().into_os_string()),
        ],
    );
    trusting.finish(Duration::from_secs(120));
    // The calls reached every master, over TLS.
    for master in cluster.masters() {
        let keys = master.keys();
        assert!(
            keys.iter().any(|k| k.starts_with("idem:tls:")),
            "master {} holds records: {keys:?}",
            master.port()
        );
    }
}

/// Runs calls over TLS, trusting the test CA through `SSL_CERT_FILE`.
async fn trusting(url: &str) {
    let store = RedisStore::open(url).await.expect("connect over TLS");
    assert_eq!(store.describe(), url);

    for i in 0..30_u32 {
        let first = Call::new("tls", i)
            .store(store.clone())
            .run(async move { i })
            .await
            .unwrap();
        assert_eq!((first.value, first.status), (i, Status::Executed));
        let replay = Call::new("tls", i)
            .store(store.clone())
            .run(async { u32::MAX })
            .await
            .unwrap();
        assert_eq!((replay.value, replay.status), (i, Status::Replayed));
    }

    // A duplicate that arrives while the first call runs gets its result (SSUBSCRIBE over TLS).
    support::calls::a_duplicate_gets_the_running_calls_result(&store, "tls").await;
}
