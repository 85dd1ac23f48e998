//! `rediss://`: `RedisStore` over TLS, with the server's certificate checked.
//!
//! This test binary has no libtest harness (`harness = false`): it starts a `redis-server`
//! listening with TLS (certificates made by `openssl`), checks that a process which does not
//! trust the server's CA is refused, then runs a copy of itself that trusts it
//! (`SSL_CERT_FILE`, read by rustls-native-certs at connect time) and uses the store.

mod support;

use std::time::Duration;

use idem::{Call, Config, Error, RedisStore, Status, Store};
use support::redis::RedisServer;
use support::workers::Workers;
use tokio::time::Instant;

/// Set in the trusting copy's environment to the `rediss://` URL.
const TRUSTING: &str = "IDEM_TEST_TLS_URL";

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
    support::harness::run_single("rediss_checks_the_certificate_and_then_works", || {
        rediss_checks_the_certificate_and_then_works(&runtime)
    });
}

fn rediss_checks_the_certificate_and_then_works(runtime: &tokio::runtime::Runtime) {
    let server = RedisServer::with_tls();
    let config = |url: String| {
        Config::default()
            .store(url)
            .connect_timeout(Duration::from_secs(2))
    };
    runtime.block_on(async {
        // This process does not trust the test CA.
        let started = Instant::now();
        match RedisStore::connect(&config(server.tls_url())).await {
            Err(Error::Connect { source, .. }) => {
                let chain = source.to_string();
                assert!(chain.contains("certificate"), "{chain}");
            }
            other => panic!("an untrusted certificate must be refused, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        // Plain text to the TLS port.
        let plain = server.tls_url().replacen("rediss://", "redis://", 1);
        assert!(
            matches!(
                RedisStore::connect(&config(plain)).await,
                Err(Error::Connect { .. })
            ),
            "redis:// to a TLS port fails at connect"
        );
    });

    let trusting = Workers::start(
        1,
        [
            (TRUSTING, server.tls_url().into()),
            ("SSL_CERT_FILE", server.tls_ca().into_os_string()),
        ],
    );
    trusting.finish(Duration::from_secs(120));
}

/// Runs calls over TLS, trusting the test CA through `SSL_CERT_FILE`.
async fn trusting(url: &str) {
    let store = RedisStore::open(url).await.expect("connect over TLS");
    assert_eq!(store.describe(), url);

    let first = Call::new("tls", "k")
        .store(store.clone())
        .run(async { 1_u32 })
        .await
        .unwrap();
    assert_eq!((first.value, first.status), (1, Status::Executed));
    let replay = Call::new("tls", "k")
        .store(store.clone())
        .run(async { 2_u32 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (1, Status::Replayed));

    // A duplicate that arrives while the first call runs gets its result (pub/sub over TLS).
    support::calls::a_duplicate_gets_the_running_calls_result(&store, "tls").await;
}
