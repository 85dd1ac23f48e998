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
