//! Calls that several stores' tests make the same way.

use std::time::Duration;

use idem::{Call, RedisStore, Status};

/// A duplicate that arrives while the first call of `scope`/`key` runs waits and gets the
/// first call's result: the completion wakes it through the store's pub/sub.
pub async fn a_duplicate_gets_the_running_calls_result(store: &RedisStore, scope: &'static str) {
    let (running_tx, running_rx) = tokio::sync::oneshot::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn({
        let store = store.clone();
        async move {
            Call::new(scope, "slow")
                .store(store)
                .run(async move {
                    running_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    10_u32
                })
                .await
        }
    });
    running_rx.await.unwrap();
    let duplicate = tokio::spawn({
        let store = store.clone();
        async move {
            Call::new(scope, "slow")
                .store(store)
                .wait(Duration::from_secs(10))
                .run(async { 20_u32 })
                .await
        }
    });
    finish_tx.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap().status, Status::Executed);
    let duplicate = duplicate.await.unwrap().unwrap();
    assert_eq!(duplicate.value, 10);
    assert!(duplicate.replayed(), "{:?}", duplicate.status);
}

/// A plain call of `scope`/`key` through `store`, fail-open on, waiting at most `wait`, with a
/// body that counts its runs in `runs`: the duplicate of the transactional tests, spawned.
/// Gives the call's result and how long it took.
#[cfg(feature = "postgres")]
pub fn plain_duplicate(
    store: &idem::PostgresStore,
    scope: String,
    key: &'static str,
    wait: Duration,
    runs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<(Result<idem::Outcome<u32>, idem::Error>, Duration)> {
    let config = idem::Config::default().fail_mode(idem::FailMode::Open);
    let idem = idem::Idem::with_settings(store.clone(), &config);
    tokio::spawn(idem.scope(async move {
        let start = tokio::time::Instant::now();
        let outcome = Call::new(scope, key)
            .wait(wait)
            .run(async {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                8_u32
            })
            .await;
        (outcome, start.elapsed())
    }))
}

/// On a store whose claim sends its statements in an order of its own: a key held by a claim
/// is reported held, with its holder, and an expired claim is taken over. `prefix` starts the keys.
pub async fn a_claim_reports_the_holder_and_takes_over_an_expired_claim(
    store: &impl idem::Store,
    prefix: &str,
) {
    use idem::store::{Claim, Record};
    let lease = Duration::from_secs(60);
    let held = format!("{prefix}:held");
    let holder = Claim::new(None);
    assert_eq!(store.claim(&held, &holder, lease).await.unwrap(), None);
    assert_eq!(
        store.claim(&held, &Claim::new(None), lease).await.unwrap(),
        Some(Record::InProgress(holder.clone())),
        "the holder is reported"
    );
    let lapsed = format!("{prefix}:lapsed");
    assert_eq!(
        store
            .claim(&lapsed, &Claim::new(None), Duration::from_millis(1))
            .await
            .unwrap(),
        None
    );
    // Expiry is the server's clock: no event to wait on.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taker = Claim::new(None);
    assert_eq!(
        store.claim(&lapsed, &taker, lease).await.unwrap(),
        None,
        "the expired claim is taken over"
    );
    assert_eq!(
        store
            .claim(&lapsed, &Claim::new(None), lease)
            .await
            .unwrap(),
        Some(Record::InProgress(taker)),
        "the taker holds it"
    );
}
