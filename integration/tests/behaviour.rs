//! Behaviour that depends on the configuration rather than on the store: fail modes, key
//! namespacing and hashing, metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::testing::{DownStore, Forwarding, Op};
use idem::{Call, Config, Error, FailMode, Idem, MemoryStore, Status, StoreErrorKind};

#[tokio::test]
async fn store_down_fails_closed_by_default() {
    let runs = AtomicUsize::new(0);
    let result = Call::new("pay", "k")
        .store(DownStore)
        .run(async { runs.fetch_add(1, Ordering::SeqCst) })
        .await;
    match result {
        Err(Error::Store { key, source }) => {
            assert_eq!(key, "idem:pay:k");
            assert_eq!(source.kind(), StoreErrorKind::Unavailable);
        }
        other => panic!("expected Error::Store, got {other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "fail-closed never runs the body"
    );
}

#[tokio::test]
async fn store_down_fails_open_when_configured() {
    let idem = Idem::with_settings(DownStore, &Config::default().fail_mode(FailMode::Open));
    let runs = AtomicUsize::new(0);
    let outcome = idem
        .scope(Call::new("pay", "k").run(async { runs.fetch_add(1, Ordering::SeqCst) + 10 }))
        .await
        .expect("fail-open runs the body");
    assert_eq!((outcome.value, outcome.status), (10, Status::Unprotected));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn keys_are_namespaced_and_hashed_on_request() {
    // A memory store that records the keys it is asked to claim.
    let store = Forwarding::new(MemoryStore::new());
    let plain = Idem::with_settings(store.clone(), &Config::default().prefix("shop"));
    plain
        .scope(Call::new("orders::create", "alice@example.com").run(async { 1 }))
        .await
        .unwrap();
    let hashed = Idem::with_settings(
        store.clone(),
        &Config::default().prefix("shop").hash_keys(true),
    );
    hashed
        .scope(Call::new("orders::create", "alice@example.com").run(async { 2 }))
        .await
        .unwrap();
    let keys = store.keys(Op::Claim);
    assert_eq!(keys[0], "shop:orders.create:alice@example.com");
    let digest = keys[1]
        .strip_prefix("shop:orders.create:#")
        .expect("hashed key");
    assert_eq!(digest.len(), 64);
    assert!(digest.chars().all(|c| c.is_ascii_hexdigit()));
}

#[tokio::test]
async fn with_store_overrides_the_configured_store() {
    let store = MemoryStore::new();
    let first = idem::with_store(store.clone(), Call::new("s", "k").run(async { 1 }))
        .await
        .unwrap();
    assert_eq!(first.status, Status::Executed);
    let again = idem::with_store(store.clone(), Call::new("s", "k").run(async { 2 }))
        .await
        .unwrap();
    assert_eq!((again.value, again.status), (1, Status::Replayed));
    // Another store has no record of it.
    let elsewhere = idem::with_store(MemoryStore::new(), Call::new("s", "k").run(async { 3 }))
        .await
        .unwrap();
    assert_eq!((elsewhere.value, elsewhere.status), (3, Status::Executed));
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn full_memory_store_refuses_new_claims_but_replays() {
    let store = MemoryStore::with_capacity(16);
    for key in 0..16 {
        Call::new("s", key)
            .store(store.clone())
            .run(async move { key })
            .await
            .unwrap();
    }
    let refused = Call::new("s", 99)
        .store(store.clone())
        .run(async { 99 })
        .await;
    match refused {
        Err(Error::Store { source, .. }) => {
            assert_eq!(source.kind(), StoreErrorKind::Full);
            assert!(source.to_string().contains("memory_capacity"), "{source}");
        }
        other => panic!("a full store refuses a new key, got {other:?}"),
    }
    let replay = Call::new("s", 3)
        .store(store.clone())
        .run(async { 0 })
        .await
        .unwrap();
    assert_eq!(
        (replay.value, replay.status),
        (3, Status::Replayed),
        "existing records still replay"
    );
}

#[tokio::test]
async fn invalid_durations_are_errors_not_panics() {
    let zero_ttl = Call::new("s", "k")
        .ttl(Duration::ZERO)
        .store(MemoryStore::new())
        .run(async { 1 })
        .await;
    assert!(
        matches!(&zero_ttl, Err(Error::Config(m)) if m.contains("ttl")),
        "{zero_ttl:?}"
    );
    let zero_lease = Call::new("s", "k")
        .lease(Duration::ZERO)
        .store(MemoryStore::new())
        .run(async { 1 })
        .await;
    assert!(
        matches!(&zero_lease, Err(Error::Config(m)) if m.contains("lease")),
        "{zero_lease:?}"
    );
    // One minimum for a lease, in the words of the attribute's compile error.
    let short_lease = Call::new("s", "k")
        .lease(Duration::from_millis(2))
        .store(MemoryStore::new())
        .run(async { 1 })
        .await;
    assert!(
        matches!(&short_lease, Err(Error::Config(m)) if m.contains(
            "`lease` must be at least 3ms: a lease is renewed every lease / 3 while the body runs"
        )),
        "{short_lease:?}"
    );
    let error = Config::default()
        .lease(Duration::from_millis(2))
        .validate()
        .unwrap_err();
    assert!(error.to_string().contains("at least 3ms"), "{error}");
    let ok = Call::new("s", "k3")
        .lease(Duration::from_millis(3))
        .store(MemoryStore::new())
        .run(async { 1 })
        .await;
    assert_eq!(ok.unwrap().value, 1);
}

/// Every failure that is not the store's has its own `outcome` label, so that a dashboard can
/// tell a bad deployment from a down store.
#[test]
fn metrics_tell_each_failure_apart() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use std::collections::HashMap;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let store = MemoryStore::new();
            let call = |key: &str| Call::new("labels", key.to_owned()).store(store.clone());
            call("ttl")
                .ttl(Duration::ZERO)
                .run(async { 1 })
                .await
                .unwrap_err();
            let unprintable: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
            call("fp")
                .fingerprint(&unprintable)
                .run(async { 1 })
                .await
                .unwrap_err();
            assert_eq!(
                call("nan").run(async { f64::NAN }).await.unwrap().status,
                Status::NotStored
            );
            call("nan").run(async { 1.0 }).await.unwrap_err();
            // Completions fail as if the store went down after the claim.
            let writes_fail =
                Forwarding::new(MemoryStore::new()).fail(Op::Complete, StoreErrorKind::Unavailable);
            let unstored = Call::new("labels", "w")
                .store(writes_fail)
                .run(async { 1 })
                .await
                .unwrap();
            assert_eq!(unstored.status, Status::NotStored);
            Call::new("labels", "down")
                .store(DownStore)
                .run(async { 1 })
                .await
                .unwrap_err();
        });
    });
    let mut counts = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if let ("idem_calls_total", DebugValue::Counter(n)) = (key.name(), value) {
            let outcome = key.labels().find(|l| l.key() == "outcome").unwrap();
            counts.insert(outcome.value().to_owned(), n);
        }
    }
    let expect: HashMap<String, u64> = [
        ("config_error", 1),
        ("fingerprint_error", 1),
        ("unstorable", 2),
        ("not_stored", 1),
        ("store_error", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counts, expect);
}

/// `store_latency(false)`: no store operation is timed into `idem_store_seconds`, and the
/// calls are counted all the same; the same calls with it on (the default) record one sample
/// per store operation.
#[test]
fn the_store_latency_setting_turns_the_histogram_off_and_keeps_the_counter() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    for on in [false, true] {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let idem = Idem::with_settings(MemoryStore::new(), &Config::default().store_latency(on));
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(idem.scope(async {
                for _ in 0..3 {
                    Call::new("latency", "a").run(async { 1 }).await.unwrap();
                }
            }));
        });
        let (mut calls, mut samples) = (0, 0);
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            match (key.key().name(), value) {
                ("idem_calls_total", DebugValue::Counter(n)) => calls += n,
                ("idem_store_seconds", DebugValue::Histogram(s)) => samples += s.len(),
                _ => {}
            }
        }
        assert_eq!(calls, 3, "every call counted (store_latency {on})");
        // A first call's claim and completion, two replays' claims.
        let expected = if on { 4 } else { 0 };
        assert_eq!(samples, expected, "store_latency {on}");
    }
}

#[test]
fn metrics_count_every_outcome() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let store = MemoryStore::new();
            let call = |key: &str| Call::new("metered", key.to_owned()).store(store.clone());
            call("a").run(async { 1 }).await.unwrap();
            call("a").run(async { 1 }).await.unwrap();
            // A scope built at run time counts under the same labels.
            Call::new(String::from("metered"), "a")
                .store(store.clone())
                .run(async { 1 })
                .await
                .unwrap();
            call("b").fingerprint("x").run(async { 1 }).await.unwrap();
            call("b")
                .fingerprint("y")
                .run(async { 1 })
                .await
                .unwrap_err();
            Call::new("metered", "c")
                .store(DownStore)
                .run(async { 1 })
                .await
                .unwrap_err();
        });
    });
    let mut counts = std::collections::HashMap::new();
    let mut store_ops = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        match (key.name(), value) {
            ("idem_calls_total", DebugValue::Counter(n)) => {
                let label = |name: &str| {
                    key.labels()
                        .find(|l| l.key() == name)
                        .map(|l| l.value().to_owned())
                };
                assert_eq!(label("scope").as_deref(), Some("metered"));
                counts.insert(label("outcome").unwrap(), n);
            }
            ("idem_store_seconds", DebugValue::Histogram(samples)) => {
                let op = key.labels().find(|l| l.key() == "op").map(|l| l.value());
                assert!(matches!(op, Some("claim" | "complete")), "{op:?}");
                store_ops += samples.len();
            }
            _ => {}
        }
    }
    let expect = [
        ("executed", 2),
        ("replayed", 2),
        ("mismatch", 1),
        ("store_error", 1),
    ];
    for (outcome, n) in expect {
        assert_eq!(
            counts.get(outcome),
            Some(&n),
            "outcome {outcome}: {counts:?}"
        );
    }
    assert_eq!(counts.len(), expect.len(), "no other outcome: {counts:?}");
    // Claims: 6 calls; completes: 2 first calls.
    assert_eq!(store_ops, 8, "one latency sample per store operation");
}
