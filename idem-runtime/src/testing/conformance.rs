//! The store conformance suite: one async function per case, [`CASES`] naming them all, and
//! [`conformance_tests!`](crate::conformance_tests) writing a test per case. Re-exported by
//! [`testing`](crate::testing), whose documentation shows how to run it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Barrier, oneshot};
use tokio::time::Instant;

use super::bounded::within;
use super::keys::store_key;
use super::stores::Forwarding;
use crate::store::{Claim, Fence, Record};
use crate::{Call, Error, Fingerprint, Inspection, Status, StoreHandle};

/// The names of every case, in the order [`conformance_tests!`](crate::conformance_tests) runs
/// them.
pub const CASES: &[&str] = &[
    "exactly_once_under_concurrency",
    "many_keys_with_duplicates",
    "replays_equal_values",
    "fingerprint_mismatch",
    "waiter_gets_result",
    "reject_without_wait",
    "lease_expiry_fences_late_completion",
    "derived_keys_survive_a_takeover",
    "steps_replay_after_a_takeover",
    "abandoned_attempts_fail_or_rerun",
    "renewal_keeps_long_body_exclusive",
    "errors_release_and_cache_err_stores",
    "panic_releases_claim",
    "dropped_future_releases_claim",
    "corrupt_record_is_decode_error",
    "ttl_expiry_runs_again",
    "fenced_operations",
    "long_and_hashed_keys",
    "unstorable_result_is_reported_never_rerun",
    "inspect_and_forget",
    "stats_count_by_state",
    "tokens_redeem_once_under_concurrency",
    "tokens_unknown_and_expired_are_refused",
    "tokens_redeemed_duplicate_replays",
    "tokens_bound_and_count",
];

/// A scope no other case or run uses.
fn scope(case: &str) -> String {
    format!("conformance::{case}::{:016x}", rand::random::<u64>())
}

fn call(store: &StoreHandle, scope: &str, key: impl std::fmt::Display) -> Call {
    Call::new(scope.to_owned(), key).store(store.clone())
}

/// 64 concurrent callers of one key: the body runs once and all get the same value.
pub async fn exactly_once_under_concurrency(store: StoreHandle) {
    const CALLERS: usize = 64;
    let scope = scope("exactly_once");
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (store, scope, runs, start) =
            (store.clone(), scope.clone(), runs.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            within("the other callers at the start", start.wait()).await;
            call(&store, &scope, "order-1")
                .wait(Duration::from_secs(10))
                .run(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    format!("receipt by caller {caller}")
                })
                .await
        }));
    }
    let mut values = HashSet::new();
    let mut executed = 0;
    for task in tasks {
        let outcome = within("a caller's task", task)
            .await
            .expect("caller task")
            .expect("every caller gets the value");
        executed += usize::from(outcome.status == Status::Executed);
        values.insert(outcome.value);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the body must run exactly once for 64 callers"
    );
    assert_eq!(executed, 1, "exactly one caller reports Executed");
    assert_eq!(
        values.len(),
        1,
        "every caller gets the same value: {values:?}"
    );
}

/// 10,000 calls over 1,000 keys with random duplicates from 8 tasks: one execution per key.
pub async fn many_keys_with_duplicates(store: StoreHandle) {
    const KEYS: u64 = 1_000;
    const CALLS: usize = 10_000;
    const TASKS: usize = 8;
    let scope = scope("many_keys");
    let runs = Arc::new(Mutex::new(HashMap::<u64, usize>::new()));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, scope, runs) = (store.clone(), scope.clone(), runs.clone());
        tasks.push(tokio::spawn(async move {
            // Every key is called at least once across the tasks, the rest are random
            // duplicates.
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ task as u64;
            for i in 0..CALLS / TASKS {
                let key = if i < KEYS as usize / TASKS {
                    (task + i * TASKS) as u64
                } else {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % KEYS
                };
                let runs = runs.clone();
                let outcome = call(&store, &scope, key)
                    .run(async move {
                        *runs.lock().unwrap().entry(key).or_default() += 1;
                        key * 3
                    })
                    .await
                    .expect("call succeeds");
                assert_eq!(outcome.value, key * 3, "key {key} replays its own value");
            }
        }));
    }
    for task in tasks {
        within("a caller's task", task).await.expect("caller task");
    }
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len() as u64, KEYS, "every key ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "keys executed more than once: {twice:?}");
}

type Mutex<T> = std::sync::Mutex<T>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Nested {
    id: u64,
    name: String,
    tags: Vec<String>,
    parent: Option<Box<Nested>>,
    scores: BTreeMap<String, f64>,
}

async fn replay_equal<T>(store: &StoreHandle, scope: &str, key: &str, value: T)
where
    T: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug + Send + 'static,
{
    let first = call(store, scope, key)
        .run(std::future::ready(value.clone()))
        .await
        .expect("first call");
    assert_eq!(first.status, Status::Executed, "{key}: the first call runs");
    let runs = AtomicUsize::new(0);
    let again = call(store, scope, key)
        .run(async {
            runs.fetch_add(1, Ordering::SeqCst);
            value.clone()
        })
        .await
        .expect("replay");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "{key}: the replay does not run the body"
    );
    assert_eq!(again.status, Status::Replayed, "{key}");
    assert_eq!(
        again.value, value,
        "{key}: the replayed value equals the original"
    );
}

/// `()`, `None`, `0`, `false`, empty collections and nested structs replay as themselves.
pub async fn replays_equal_values(store: StoreHandle) {
    let scope = scope("replay");
    replay_equal(&store, &scope, "unit", ()).await;
    replay_equal(&store, &scope, "none", Option::<u32>::None).await;
    replay_equal(&store, &scope, "some-zero", Some(0_u32)).await;
    replay_equal(&store, &scope, "zero", 0_i64).await;
    replay_equal(&store, &scope, "false", false).await;
    replay_equal(&store, &scope, "empty-string", String::new()).await;
    replay_equal(&store, &scope, "empty-vec", Vec::<u8>::new()).await;
    replay_equal(&store, &scope, "empty-map", BTreeMap::<String, u8>::new()).await;
    replay_equal(&store, &scope, "unicode", "ключ 🔑 \"quoted\"\n".to_owned()).await;
    let leaf = Nested {
        id: 2,
        name: "leaf".into(),
        tags: vec![],
        parent: None,
        scores: BTreeMap::new(),
    };
    let tree = Nested {
        id: 1,
        name: "root".into(),
        tags: vec!["a".into(), "b".into()],
        parent: Some(Box::new(leaf)),
        scores: [("x".to_owned(), 0.5)].into_iter().collect(),
    };
    replay_equal(&store, &scope, "nested", tree).await;
    replay_equal(&store, &scope, "result-ok", Result::<u8, String>::Ok(0)).await;
}

/// The same key with another fingerprint is `KeyMismatch`, both against a completed record
/// and against one in progress; the same fingerprint replays.
pub async fn fingerprint_mismatch(store: StoreHandle) {
    let scope = scope("fingerprint");
    let first = call(&store, &scope, "k")
        .fingerprint(&("alice", 100))
        .run(async { 1_u8 })
        .await
        .expect("first");
    assert_eq!(first.status, Status::Executed);
    let same = call(&store, &scope, "k")
        .fingerprint(&("alice", 100))
        .run(async { 2_u8 })
        .await
        .expect("same request");
    assert_eq!((same.value, same.status), (1, Status::Replayed));
    let other = call(&store, &scope, "k")
        .fingerprint(&("alice", 999))
        .run(async { 3_u8 })
        .await;
    assert!(
        matches!(other, Err(Error::KeyMismatch { .. })),
        "another request: {other:?}"
    );

    // In progress: the duplicate with another request is refused without waiting.
    let (finish, holder) = start_held(&store, &scope, "busy", |c| c.fingerprint("request-a")).await;
    let started = Instant::now();
    let other = call(&store, &scope, "busy")
        .fingerprint("request-b")
        .wait(Duration::from_secs(10))
        .run(async { 8_u32 })
        .await;
    assert!(
        matches!(other, Err(Error::KeyMismatch { .. })),
        "in progress: {other:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a mismatch does not wait"
    );
    finish.send(7).unwrap();
    assert_eq!(
        within("the first call", holder)
            .await
            .unwrap()
            .unwrap()
            .value,
        7
    );
}

/// Starts a call on `key` whose body waits for the returned sender; returns once it holds the
/// key.
async fn start_held(
    store: &StoreHandle,
    scope: &str,
    key: &str,
    configure: impl FnOnce(Call) -> Call,
) -> (
    oneshot::Sender<u32>,
    tokio::task::JoinHandle<Result<crate::Outcome<u32>, Error>>,
) {
    let (finish, finished) = oneshot::channel::<u32>();
    let (started, is_started) = oneshot::channel::<()>();
    let request = configure(call(store, scope, key));
    let task = tokio::spawn(request.run(async move {
        let _ = started.send(());
        finished.await.unwrap_or(0)
    }));
    within("the held call's body to start", is_started)
        .await
        .expect("the held call starts its body");
    (finish, task)
}

/// A duplicate that arrives while the first call runs waits and gets its result.
pub async fn waiter_gets_result(store: StoreHandle) {
    let scope = scope("waiter");
    let (finish, first) = start_held(&store, &scope, "k", |c| c).await;
    let watched = Forwarding::new(store.clone());
    let waiter = {
        let (store, scope) = (StoreHandle::new(watched.clone()), scope.clone());
        tokio::spawn(async move {
            call(&store, &scope, "k")
                .wait(Duration::from_secs(10))
                .run(async { panic!("the waiter must not run the body") })
                .await
        })
    };
    // The waiter has found the key in progress once it waits: finishing now makes it a
    // waiter, however slow the machine.
    watched.waiting().await;
    finish.send(41).unwrap();
    assert_eq!(
        within("the first call", first)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Executed
    );
    let waited = within("the waiter's task", waiter)
        .await
        .expect("waiter task")
        .expect("waiter gets the result");
    assert_eq!((waited.value, waited.status), (41, Status::Waited));
}

/// `wait = 0` rejects a duplicate at once; a short wait gives up with `InProgress`.
pub async fn reject_without_wait(store: StoreHandle) {
    let scope = scope("reject");
    let (finish, first) = start_held(&store, &scope, "k", |c| c).await;
    let started = Instant::now();
    let rejected = call(&store, &scope, "k")
        .wait(Duration::ZERO)
        .run(async { 1_u32 })
        .await;
    assert!(
        matches!(rejected, Err(Error::InProgress { .. })),
        "{rejected:?}"
    );
    let waited = call(&store, &scope, "k")
        .wait(Duration::from_millis(200))
        .run(async { 1_u32 })
        .await;
    assert!(
        matches!(waited, Err(Error::InProgress { .. })),
        "{waited:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(3),
        "the waiter gives up after its wait, took {elapsed:?}"
    );
    finish.send(5).unwrap();
    assert_eq!(
        within("the first call", first)
            .await
            .unwrap()
            .unwrap()
            .value,
        5
    );
}

/// With renewal off, a claim whose lease ends is taken by a second caller that runs; the
/// first caller's late completion is fenced out (`LeaseLost`, own value returned) and the
/// second caller's record is kept.
pub async fn lease_expiry_fences_late_completion(store: StoreHandle) {
    let scope = scope("fencing");
    let lease = Duration::from_millis(300);
    let (finish, first) =
        start_held(&store, &scope, "k", |c| c.lease(lease).heartbeat(false)).await;
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let second = call(&store, &scope, "k")
        .wait(Duration::ZERO)
        .run(async { 2_u32 })
        .await
        .expect("second caller");
    assert_eq!(
        second.status,
        Status::Executed,
        "after the lease ends a second caller runs"
    );
    finish.send(1).unwrap();
    let first = first
        .await
        .unwrap()
        .expect("the late caller still gets its own result");
    assert_eq!((first.value, first.status), (1, Status::LeaseLost));
    let third = call(&store, &scope, "k")
        .run(async { 3_u32 })
        .await
        .unwrap();
    assert_eq!(
        (third.value, third.status),
        (2, Status::Replayed),
        "the second caller's record is kept"
    );
}

/// A body reads its call ([`call_context`](crate::call_context)): scope and store key; the key
/// it derives for a downstream system is the same on the attempt that took the key over after
/// the first one's lease ended (the downstream system deduplicates the re-run), and differs
/// per label. [`with_status`](crate::with_status) tells the caller how each call ended.
pub async fn derived_keys_survive_a_takeover(store: StoreHandle) {
    let scope = scope("derived");
    let lease = Duration::from_millis(300);
    let (sent, mut seen) = tokio::sync::mpsc::unbounded_channel::<(String, String, String)>();
    let body = |sent: tokio::sync::mpsc::UnboundedSender<_>,
                hold: Option<oneshot::Receiver<()>>,
                value: u32| async move {
        let call = crate::call_context().expect("a body sees its call");
        let derived = crate::derive_key("charge").expect("a body derives keys");
        assert_eq!(derived, call.derive_key("charge"));
        assert_ne!(derived, call.derive_key("notify"), "one key per label");
        sent.send((call.scope().to_owned(), call.key().to_owned(), derived))
            .expect("the case listens");
        if let Some(hold) = hold {
            let _ = hold.await;
        }
        value
    };
    let (release_first, hold) = oneshot::channel();
    let first = tokio::spawn(
        call(&store, &scope, "k")
            .lease(lease)
            .heartbeat(false)
            .run(body(sent.clone(), Some(hold), 1)),
    );
    let (first_scope, first_key, first_derived) = within("the first attempt's body", seen.recv())
        .await
        .expect("the first attempt sends what it derived");
    assert_eq!(first_scope, scope);
    assert_eq!(
        first_key,
        store_key("idem", &scope, "k"),
        "the key as stored"
    );
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let (second, status) = crate::with_status(
        call(&store, &scope, "k")
            .wait(Duration::ZERO)
            .run(body(sent.clone(), None, 7)),
    )
    .await;
    assert_eq!(
        second.expect("the second attempt runs").status,
        Status::Executed
    );
    assert_eq!(
        status,
        Some(Status::Executed),
        "with_status reports the call"
    );
    let (_, second_key, second_derived) = within("the second attempt's body", seen.recv())
        .await
        .expect("the second attempt sends what it derived");
    assert_eq!(second_key, first_key);
    assert_eq!(
        second_derived, first_derived,
        "the attempt that took the key over derives the first attempt's key"
    );
    release_first.send(()).ok();
    let late = within("the first attempt's end", first)
        .await
        .expect("the first attempt's task")
        .expect("the first attempt's call");
    // Its own value, not stored: the record is the second attempt's.
    assert_eq!((late.value, late.status), (1, Status::LeaseLost));
    let (replay, status) =
        crate::with_status(call(&store, &scope, "k").run(body(sent, None, 9))).await;
    assert_eq!(replay.expect("a replay").value, 7);
    assert_eq!(status, Some(Status::Replayed));
    assert!(seen.try_recv().is_err(), "a replay runs no body");
    let (other, _) = crate::with_status(
        call(&store, &scope, "other")
            .run(async { crate::derive_key("charge").expect("a body derives keys") }),
    )
    .await;
    assert_ne!(
        other.expect("another key").value,
        first_derived,
        "one key per call"
    );
}

/// Abandoned attempts ([`Abandoned`](crate::Abandoned)): a call that marks its attempts and
/// finds an earlier one that began and never ended fails with [`Error::Abandoned`] under
/// `Fail` (every time, until an operator completes the key, which the next call replays, or
/// forgets it, which makes the next call attempt 1), and runs as the next attempt under
/// `Rerun`, with the earlier attempt's completed steps replayed. An error the body returns
/// and the call does not store ends its attempt: the next call is attempt 1.
pub async fn abandoned_attempts_fail_or_rerun(store: StoreHandle) {
    use crate::Abandoned;
    let scope = scope("abandoned");
    let admin = crate::Idem::with_settings(store.clone(), &crate::Config::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let steps = Arc::new(AtomicUsize::new(0));
    // A body that records one step, tells its attempt, then stalls while `hold` is open.
    let body = |hold: Option<oneshot::Receiver<()>>,
                reached: Option<oneshot::Sender<Option<u32>>>,
                value: u64| {
        let (runs, steps) = (runs.clone(), steps.clone());
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let attempt = crate::call_context()
                .expect("a body sees its call")
                .attempt();
            crate::step("reserve", async {
                steps.fetch_add(1, Ordering::SeqCst);
            })
            .await?;
            if let Some(reached) = reached {
                let _ = reached.send(attempt);
            }
            if let Some(hold) = hold {
                let _ = hold.await;
            }
            Ok::<_, Error>((value, attempt))
        }
    };
    let count = |n: &AtomicUsize| n.load(Ordering::SeqCst);

    // An attempt under `Fail` that dies after its step: its future is dropped mid-body.
    let (_keep, hold) = oneshot::channel();
    let (reached, is_reached) = oneshot::channel();
    let first = tokio::spawn(
        call(&store, &scope, "f")
            .abandoned(Abandoned::Fail)
            .run_result(body(Some(hold), Some(reached), 1)),
    );
    let attempt = within("the first attempt's step", is_reached)
        .await
        .expect("the first attempt reaches its step");
    assert_eq!(attempt, Some(1), "the first attempt is attempt 1");
    first.abort();
    let _ = within("the first attempt's end", first).await;
    for _ in 0..2 {
        let error = call(&store, &scope, "f")
            .abandoned(Abandoned::Fail)
            .wait(Duration::from_secs(5))
            .run_result(body(None, None, 2))
            .await
            .expect_err("an abandoned attempt fails the call");
        match error {
            Error::Abandoned {
                key,
                attempt,
                steps,
                ..
            } => {
                assert_eq!(key, store_key("idem", &scope, "f"));
                assert_eq!(attempt, 1, "the abandoned attempt's number");
                assert_eq!(steps, Some(1), "its one completed step");
            }
            other => panic!("expected Error::Abandoned, got {other:?}"),
        }
    }
    assert_eq!((count(&runs), count(&steps)), (1, 1), "no body ran again");
    let inspected = admin
        .scope(crate::inspect(&scope, "f"))
        .await
        .expect("inspect");
    assert!(
        matches!(
            inspected,
            Inspection::Abandoned {
                attempt: 1,
                steps: Some(1),
                ..
            }
        ),
        "{inspected:?}"
    );
    // Completed by hand: the next call replays the operator's value.
    admin
        .scope(crate::complete(
            &scope,
            "f",
            serde_json::json!([40, 1]),
            Duration::from_secs(60),
        ))
        .await
        .expect("complete by hand");
    let replay = call(&store, &scope, "f")
        .abandoned(Abandoned::Fail)
        .run_result(body(None, None, 3))
        .await
        .expect("a replay");
    assert_eq!(
        (replay.value.expect("the value"), replay.status),
        ((40, Some(1)), Status::Replayed)
    );
    // Forgotten: the next call is attempt 1, and runs every step.
    assert!(
        admin
            .scope(crate::forget(&scope, "f"))
            .await
            .expect("forget")
    );
    let again = call(&store, &scope, "f")
        .abandoned(Abandoned::Fail)
        .run_result(body(None, None, 4))
        .await
        .expect("a call after forget");
    assert_eq!(
        (again.value.expect("the value"), again.status),
        ((4, Some(1)), Status::Executed),
        "a first attempt is no takeover"
    );
    assert_eq!((count(&runs), count(&steps)), (2, 2));

    // Under `Rerun`, the attempt that takes an abandoned one over is attempt 2 and replays its
    // completed step.
    let (_keep, hold) = oneshot::channel();
    let (reached, is_reached) = oneshot::channel();
    let first = tokio::spawn(
        call(&store, &scope, "r")
            .abandoned(Abandoned::Rerun)
            .run_result(body(Some(hold), Some(reached), 5)),
    );
    within("the first attempt's step", is_reached)
        .await
        .expect("the first attempt reaches its step");
    first.abort();
    let _ = within("the first attempt's end", first).await;
    let rerun = call(&store, &scope, "r")
        .abandoned(Abandoned::Rerun)
        .wait(Duration::from_secs(5))
        .run_result(body(None, None, 6))
        .await
        .expect("the next attempt runs");
    assert_eq!(
        (rerun.value.expect("the value"), rerun.status),
        ((6, Some(2)), Status::TookOver)
    );
    assert_eq!(
        (count(&runs), count(&steps)),
        (4, 3),
        "two bodies ran, the step once: the second replayed it"
    );

    // A released error ends its attempt: no abandoned attempt for the next call.
    let failed = call(&store, &scope, "e")
        .abandoned(Abandoned::Fail)
        .run_result(async { Err::<u64, _>(std::io::Error::other("declined")) })
        .await
        .expect("the call ran");
    assert!(failed.value.is_err());
    let next = call(&store, &scope, "e")
        .abandoned(Abandoned::Fail)
        .run_result(async {
            Ok::<_, std::io::Error>(
                crate::call_context()
                    .and_then(|call| call.attempt())
                    .unwrap_or(0),
            )
        })
        .await
        .expect("the call runs");
    assert_eq!(next.value.expect("the value"), 1, "attempt 1 again");
}

/// Recorded steps ([`step`](crate::step)): an attempt that takes a key over after the first
/// one's lease ended replays the steps the first one completed without running them, and runs
/// the rest; a re-run whose steps differ from the recorded ones is
/// [`Error::StepMismatch`]; a step whose future failed ([`try_step`](crate::try_step)) is not
/// recorded and runs again.
pub async fn steps_replay_after_a_takeover(store: StoreHandle) {
    let scope = scope("steps");
    let lease = Duration::from_millis(300);
    let runs: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let order = |hold: Option<oneshot::Receiver<()>>, reached: Option<oneshot::Sender<()>>| {
        let runs = runs.clone();
        async move {
            let reserved = crate::step("reserve", async {
                runs[0].fetch_add(1, Ordering::SeqCst);
                format!("row-{}", runs[0].load(Ordering::SeqCst))
            })
            .await?;
            let charged = crate::step("charge", async {
                runs[1].fetch_add(1, Ordering::SeqCst);
                crate::derive_key("charge").expect("a step runs in its call's body")
            })
            .await?;
            if let Some(reached) = reached {
                let _ = reached.send(());
            }
            if let Some(hold) = hold {
                let _ = hold.await; // the first attempt stalls here, past its lease
            }
            crate::step("notify", async {
                runs[2].fetch_add(1, Ordering::SeqCst);
            })
            .await?;
            Ok::<_, Error>((reserved, charged))
        }
    };
    let (release_first, hold) = oneshot::channel();
    let (reached, is_reached) = oneshot::channel();
    let first = tokio::spawn(
        call(&store, &scope, "k")
            .lease(lease)
            .heartbeat(false)
            .run_result(order(Some(hold), Some(reached))),
    );
    within("the first attempt's two steps", is_reached)
        .await
        .expect("the first attempt completes two steps");
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let second = call(&store, &scope, "k")
        .wait(Duration::ZERO)
        .run_result(order(None, None))
        .await
        .expect("the second attempt takes the key over");
    assert_eq!(second.status, Status::Executed);
    let (reserved, charged) = second.value.expect("the second attempt's steps");
    assert_eq!(
        reserved, "row-1",
        "the recorded output of the first attempt's step"
    );
    let counts = |runs: &[AtomicUsize; 3]| runs.each_ref().map(|n| n.load(Ordering::SeqCst));
    assert_eq!(
        counts(&runs),
        [1, 1, 1],
        "completed steps replay without running; the rest run once"
    );
    let expected_key =
        crate::Idem::with_settings(crate::MemoryStore::new(), &crate::Config::default())
            .scope(
                Call::new(scope.clone(), "k")
                    .run(async { crate::derive_key("charge").expect("a derived key") }),
            )
            .await
            .expect("a call")
            .value;
    assert_eq!(charged, expected_key, "the recorded step's output");
    release_first.send(()).ok();
    let late = within("the first attempt's end", first)
        .await
        .expect("the first attempt's task")
        .expect("the first attempt's call");
    // Its value is the second attempt's, step for step: a store may take its completion for a
    // retry of the same write (Redis does) or fence it out.
    assert!(
        matches!(late.status, Status::LeaseLost | Status::Executed),
        "{late:?}"
    );
    assert_eq!(
        counts(&runs),
        [1, 1, 1],
        "the stalled attempt replays the step the other one completed: no step ran twice"
    );

    // Another sequence on a key whose steps are recorded: a typed error, nothing replayed.
    let (release_first, hold) = oneshot::channel();
    let (reached, is_reached) = oneshot::channel();
    let first = tokio::spawn(
        call(&store, &scope, "changed")
            .lease(lease)
            .heartbeat(false)
            .run_result({
                let runs = runs.clone();
                async move {
                    crate::step("reserve", async { runs[0].fetch_add(1, Ordering::SeqCst) })
                        .await?;
                    let _ = reached.send(());
                    let _ = hold.await;
                    Ok::<_, Error>(())
                }
            }),
    );
    within("the first attempt's step", is_reached)
        .await
        .expect("the first attempt completes its step");
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let changed = call(&store, &scope, "changed")
        .wait(Duration::ZERO)
        .run_result(async {
            crate::step::<(), _>("charge", async {
                unreachable!("a mismatched step never runs")
            })
            .await
        })
        .await
        .expect("the call ran its body");
    match changed.value {
        Err(Error::StepMismatch { key, index, name }) => {
            assert_eq!((index, name.as_str()), (1, "charge"));
            assert_eq!(key, store_key("idem", &scope, "changed"));
        }
        other => panic!("expected Error::StepMismatch, got {other:?}"),
    }
    release_first.send(()).ok();
    let _ = within("the first attempt's end", first).await;

    // A failed step records nothing: the next attempt runs it again.
    let tries = AtomicUsize::new(0);
    let flaky = || {
        call(&store, &scope, "flaky").run_result(async {
            crate::try_step("charge", async {
                match tries.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(Error::Config("the gateway timed out".to_owned())),
                    n => Ok(n),
                }
            })
            .await
        })
    };
    let failed = flaky().await.expect("the first call");
    assert!(failed.value.is_err(), "{failed:?}");
    let retried = flaky().await.expect("the retry");
    assert_eq!(retried.value.expect("the retry's step"), 1);
    let replayed = flaky().await.expect("a replay");
    assert_eq!(
        (replayed.value.expect("the value"), replayed.status),
        (1, Status::Replayed)
    );
    assert_eq!(tries.load(Ordering::SeqCst), 2);
}

/// With renewal on, a body running three times its lease keeps the key: a duplicate waits
/// and the body runs once.
pub async fn renewal_keeps_long_body_exclusive(store: StoreHandle) {
    let scope = scope("renewal");
    let lease = Duration::from_millis(300);
    let runs = Arc::new(AtomicUsize::new(0));
    let body = |runs: Arc<AtomicUsize>| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(lease * 3).await;
        9_u32
    };
    let first = tokio::spawn(
        call(&store, &scope, "k")
            .lease(lease)
            .run(body(runs.clone())),
    );
    tokio::time::sleep(lease + lease / 2).await;
    let second = call(&store, &scope, "k")
        .lease(lease)
        .wait(Duration::from_secs(10))
        .run(body(runs.clone()))
        .await
        .expect("duplicate");
    assert_eq!(
        within("the first call", first)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Executed
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "renewal keeps the key: the body runs once"
    );
    assert_eq!((second.value, second.status), (9, Status::Waited));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum PayError {
    Declined,
    Timeout,
}

/// `Err` releases the key (a retry runs again); with `cache_err` a permanent error is stored
/// and replayed.
pub async fn errors_release_and_cache_err_stores(store: StoreHandle) {
    let scope = scope("errors");
    let runs = AtomicUsize::new(0);
    let failing = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Err::<u32, _>(PayError::Timeout)
    };
    for _ in 0..2 {
        let outcome = call(&store, &scope, "transient")
            .run_result(failing())
            .await
            .unwrap();
        assert_eq!(outcome.value, Err(PayError::Timeout));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "a released error runs again on retry"
    );
    let ok = call(&store, &scope, "transient")
        .run_result(async { Ok::<_, PayError>(3_u32) })
        .await
        .unwrap();
    assert_eq!((ok.value, ok.status), (Ok(3), Status::Executed));

    let permanent = |e: &PayError| *e == PayError::Declined;
    let declined = call(&store, &scope, "declined")
        .run_result_caching(permanent, async { Err::<u32, _>(PayError::Declined) })
        .await
        .unwrap();
    assert_eq!(
        (declined.value, declined.status),
        (Err(PayError::Declined), Status::Executed)
    );
    let replay = call(&store, &scope, "declined")
        .run_result_caching(permanent, async { Ok::<u32, PayError>(1) })
        .await
        .unwrap();
    assert_eq!(
        (replay.value, replay.status),
        (Err(PayError::Declined), Status::Replayed)
    );
    let timeout = call(&store, &scope, "timeout")
        .run_result_caching(permanent, async { Err::<u32, _>(PayError::Timeout) })
        .await
        .unwrap();
    assert_eq!(timeout.value, Err(PayError::Timeout));
    let retried = call(&store, &scope, "timeout")
        .run_result_caching(permanent, async { Ok::<u32, PayError>(4) })
        .await
        .unwrap();
    assert_eq!(
        (retried.value, retried.status),
        (Ok(4), Status::Executed),
        "a transient error is not cached"
    );
}

/// Asserts that the next call on `key` runs, long before the 30 s lease could have ended.
async fn runs_again_at_once(store: &StoreHandle, scope: &str, key: &str) {
    let started = Instant::now();
    let next = call(store, scope, key)
        .wait(Duration::from_secs(5))
        .run(async { 2_u32 })
        .await
        .expect("the next call runs");
    assert_eq!(next.status, Status::Executed, "the claim was released");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "released at once, not at lease end"
    );
}

/// A panicking body releases its claim at once.
pub async fn panic_releases_claim(store: StoreHandle) {
    let scope = scope("panic");
    let request = call(&store, &scope, "k").lease(Duration::from_secs(30));
    let panicked =
        tokio::spawn(request.run::<u32, _>(async {
            panic!("the body panics (this panic is expected by the test)")
        }))
        .await;
    assert!(panicked.unwrap_err().is_panic());
    runs_again_at_once(&store, &scope, "k").await;
}

/// A call whose future is dropped while the body runs (client gone, timeout) releases its
/// claim at once.
pub async fn dropped_future_releases_claim(store: StoreHandle) {
    let scope = scope("dropped");
    let (started, is_started) = oneshot::channel::<()>();
    let request = call(&store, &scope, "k")
        .lease(Duration::from_secs(30))
        .run(async move {
            let _ = started.send(());
            std::future::pending::<u32>().await
        });
    let timed_out = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(request, async { is_started.await.expect("body started") }).0
    })
    .await;
    assert!(
        timed_out.is_err(),
        "the body never ends, so the timeout drops the call"
    );
    runs_again_at_once(&store, &scope, "k").await;
}

/// Corrupt bytes and a record of another type are `Error::Decode` naming the key and the
/// expected type; the body does not run.
pub async fn corrupt_record_is_decode_error(store: StoreHandle) {
    let scope = scope("corrupt");
    // Write garbage through the store itself, as a broken writer would.
    let key = store_key("idem", &scope, "garbage");
    let writer = Claim::new(None);
    assert_eq!(
        store
            .claim(&key, &writer, Duration::from_secs(5))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .complete(&key, &writer, b"\x00not json", Duration::from_secs(60))
            .await
            .unwrap(),
        Fence::Held
    );
    let runs = AtomicUsize::new(0);
    let result = Call::new(scope.clone(), "garbage")
        .store(store.clone())
        .run(async {
            runs.fetch_add(1, Ordering::SeqCst);
            1_u32
        })
        .await;
    match result {
        Err(Error::Decode {
            key: k, expected, ..
        }) => {
            assert_eq!(k, key);
            assert_eq!(expected, "u32");
        }
        other => panic!("a corrupt record must be Error::Decode, got {other:?}"),
    }
    // A record of another type: the return type changed since it was written.
    call(&store, &scope, "typed")
        .run(async { "text".to_owned() })
        .await
        .unwrap();
    let changed = call(&store, &scope, "typed").run(async { 1_u32 }).await;
    assert!(
        matches!(
            &changed,
            Err(Error::Decode {
                expected: "u32",
                ..
            })
        ),
        "{changed:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the body never runs over an unreadable record"
    );
}

/// A completed record ends with its ttl; the key then runs again.
pub async fn ttl_expiry_runs_again(store: StoreHandle) {
    let scope = scope("ttl");
    let ttl = Duration::from_millis(200);
    let first = call(&store, &scope, "k")
        .ttl(ttl)
        .run(async { 1_u32 })
        .await
        .unwrap();
    assert_eq!(first.status, Status::Executed);
    let replay = call(&store, &scope, "k")
        .ttl(ttl)
        .run(async { 2_u32 })
        .await
        .unwrap();
    assert_eq!((replay.value, replay.status), (1, Status::Replayed));
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    let again = call(&store, &scope, "k")
        .ttl(ttl)
        .run(async { 3_u32 })
        .await
        .unwrap();
    assert_eq!(
        (again.value, again.status),
        (3, Status::Executed),
        "the record expired"
    );
}

/// Complete, release and renew apply only for the claim that holds the key.
pub async fn fenced_operations(store: StoreHandle) {
    let key = format!("idem:{}:k", scope("fenced"));
    let lease = Duration::from_secs(10);
    let holder = Claim::new(None);
    let stranger = Claim::new(None);
    assert_eq!(store.claim(&key, &holder, lease).await.unwrap(), None);
    assert_eq!(
        store.claim(&key, &stranger, lease).await.unwrap(),
        Some(Record::InProgress(holder.clone())),
        "a second claim sees the holder and changes nothing"
    );
    assert_eq!(
        store.renew(&key, &stranger, lease).await.unwrap(),
        Fence::Lost
    );
    assert_eq!(store.release(&key, &stranger).await.unwrap(), Fence::Lost);
    assert_eq!(
        store.complete(&key, &stranger, b"x", lease).await.unwrap(),
        Fence::Lost
    );
    assert_eq!(
        store.renew(&key, &holder, lease).await.unwrap(),
        Fence::Held
    );
    assert_eq!(
        store.complete(&key, &holder, b"done", lease).await.unwrap(),
        Fence::Held
    );
    assert_eq!(
        store.release(&key, &holder).await.unwrap(),
        Fence::Lost,
        "a completed record is not released"
    );
    match store.claim(&key, &stranger, lease).await.unwrap() {
        Some(Record::Completed {
            payload,
            expires_in,
        }) => {
            assert_eq!(
                payload, b"done",
                "the completed payload is returned as written"
            );
            if let Some(left) = expires_in {
                assert!(
                    left <= lease,
                    "a reported expiry is within the ttl: {left:?}"
                );
            }
        }
        other => panic!("a completed record is returned to a later claim, got {other:?}"),
    }

    let released = format!("{key}:released");
    assert_eq!(store.claim(&released, &holder, lease).await.unwrap(), None);
    assert_eq!(
        store.release(&released, &holder).await.unwrap(),
        Fence::Held
    );
    assert_eq!(
        store.claim(&released, &stranger, lease).await.unwrap(),
        None,
        "a released key is free"
    );
    assert_eq!(
        store.release(&released, &stranger).await.unwrap(),
        Fence::Held
    );
}

/// Long keys, keys with control characters and `#` keys are stored hashed, and stay distinct.
pub async fn long_and_hashed_keys(store: StoreHandle) {
    let scope = scope("keys");
    let long_a = format!("{}a", "k".repeat(10_000));
    let long_b = format!("{}b", "k".repeat(10_000));
    let keys = [
        long_a.as_str(),
        long_b.as_str(),
        "line\nbreak",
        "line\rbreak",
        "#hash",
        "plain",
    ];
    for (i, key) in keys.iter().enumerate() {
        let first = call(&store, &scope, key)
            .run(async move { i })
            .await
            .unwrap();
        assert_eq!(
            (first.value, first.status),
            (i, Status::Executed),
            "key {i} is its own"
        );
    }
    for (i, key) in keys.iter().enumerate() {
        let again = call(&store, &scope, key)
            .run(async { usize::MAX })
            .await
            .unwrap();
        assert_eq!(
            (again.value, again.status),
            (i, Status::Replayed),
            "key {i} replays its own value"
        );
    }
}

/// A result that cannot be stored so that it reads back as its type (a NaN, which JSON writes
/// as `null`; a map whose keys are not strings, which JSON cannot write) goes to the first
/// caller as [`Status::NotStored`]; later calls get [`Error::Unstorable`] naming the type and
/// the reason. The body never runs again, and nothing is replayed as a wrong value.
pub async fn unstorable_result_is_reported_never_rerun(store: StoreHandle) {
    let scope = scope("unstorable");
    let runs = Arc::new(AtomicUsize::new(0));
    fn counted<T>(runs: &Arc<AtomicUsize>, value: T) -> impl Future<Output = T> + use<T> {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            value
        }
    }
    let first = call(&store, &scope, "nan")
        .run(counted(&runs, f64::NAN))
        .await
        .expect("the first caller gets its value");
    assert!(first.value.is_nan());
    assert_eq!(first.status, Status::NotStored);
    let map: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let first = call(&store, &scope, "map")
        .run_result(counted(&runs, Ok::<_, String>(map.clone())))
        .await
        .expect("the first caller gets its value");
    assert_eq!((first.value, first.status), (Ok(map), Status::NotStored));
    for _ in 0..2 {
        match call(&store, &scope, "nan")
            .run(counted(&runs, 1.0_f64))
            .await
        {
            Err(Error::Unstorable {
                type_name, reason, ..
            }) => {
                assert_eq!(type_name, "f64");
                assert!(reason.contains("`null`"), "{reason}");
            }
            other => panic!("a NaN record must be Error::Unstorable, got {other:?}"),
        }
        let later = call(&store, &scope, "map")
            .run_result(counted(
                &runs,
                Ok::<HashMap<(u8, u8), u8>, String>(HashMap::new()),
            ))
            .await;
        match later {
            Err(Error::Unstorable {
                type_name, reason, ..
            }) => {
                assert!(type_name.contains("HashMap<(u8, u8), u8>"), "{type_name}");
                assert!(reason.contains("key must be a string"), "{reason}");
            }
            other => panic!("a map record must be Error::Unstorable, got {other:?}"),
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "each body ran once, for its first caller only"
    );
}

/// [`inspect`](crate::inspect) and [`forget`](crate::forget) on the store: an absent key, a
/// call in progress with its lease, a completed record with its ttl and size; forgetting it
/// makes the key absent and the next call runs again; forgetting an absent key is `false`.
pub async fn inspect_and_forget(store: StoreHandle) {
    let scope = scope("inspect");
    let on_store = |future| crate::with_store(store.clone(), future);
    let (lease, ttl) = (Duration::from_secs(20), Duration::from_secs(60));
    assert_eq!(
        on_store(crate::inspect(&scope, "k")).await.unwrap(),
        Inspection::Absent
    );
    assert!(
        !crate::with_store(store.clone(), crate::forget(&scope, "k"))
            .await
            .unwrap(),
        "forgetting an absent key deletes nothing"
    );

    let request = "the request";
    let fp = Fingerprint::of(&request).unwrap();
    let (finish, first) = start_held(&store, &scope, "k", |c| {
        c.lease(lease).ttl(ttl).fingerprint(&request)
    })
    .await;
    match on_store(crate::inspect(&scope, "k")).await.unwrap() {
        Inspection::InProgress {
            lease_left,
            fingerprint,
        } => {
            if let Some(left) = lease_left {
                assert!(
                    left <= lease,
                    "the lease left is within the lease: {left:?}"
                );
            }
            assert_eq!(fingerprint, Some(fp), "the claim's fingerprint");
        }
        other => panic!("a running call is in progress, got {other:?}"),
    }
    finish.send(7).unwrap();
    assert_eq!(
        within("the first call", first)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Executed
    );
    let payload = crate::codec::seal(Some(&fp), crate::codec::RecordSide::Ok, &7_u32).unwrap();
    match on_store(crate::inspect(&scope, "k")).await.unwrap() {
        Inspection::Completed {
            ttl_left,
            fingerprint,
            size,
        } => {
            if let Some(left) = ttl_left {
                assert!(left <= ttl, "the ttl left is within the ttl: {left:?}");
            }
            assert!(
                fingerprint.is_none_or(|found| found == fp),
                "a reported fingerprint is the request's: {fingerprint:?}"
            );
            assert_eq!(size, payload.len(), "the size is the stored payload's");
        }
        other => panic!("a completed call is completed, got {other:?}"),
    }

    assert!(
        crate::with_store(store.clone(), crate::forget(&scope, "k"))
            .await
            .unwrap(),
        "forgetting a completed record deletes it"
    );
    assert_eq!(
        on_store(crate::inspect(&scope, "k")).await.unwrap(),
        Inspection::Absent
    );
    let again = call(&store, &scope, "k")
        .fingerprint(&request)
        .run(async { 8_u32 })
        .await
        .unwrap();
    assert_eq!(
        (again.value, again.status),
        (8, Status::Executed),
        "a forgotten key runs again"
    );
}

/// [`Store::stats`](crate::Store::stats) counts the live records under a prefix by state, and
/// only those, and by scope when the store counts scopes ([`Stats::scopes`](crate::Stats)
/// not `None`); with a limit below their number, it counts that many and says it sampled. A
/// store that does not implement it (the trait's default: [`StoreErrorKind::Other`], "does not
/// support stats") passes.
///
/// [`StoreErrorKind::Other`]: crate::StoreErrorKind::Other
pub async fn stats_count_by_state(store: StoreHandle) {
    let base = format!("stats{:016x}", rand::random::<u64>());
    let prefix = format!("{base}:");
    let (lease, ttl) = (Duration::from_secs(20), Duration::from_secs(60));
    let payload = crate::codec::seal(None, crate::codec::RecordSide::Ok, &1_u8).unwrap();
    let claimed = |key: String| {
        let store = store.clone();
        async move {
            let claim = Claim::new(None);
            let found = store.claim(&key, &claim, lease).await.unwrap();
            assert!(found.is_none(), "{key} was free");
            (key, claim)
        }
    };
    // One call in progress, three completed, and one completed record under another prefix
    // that shares the first characters.
    claimed(format!("{prefix}s:running")).await;
    for key in ["s:a", "s:b", r"t\:x.y:c"]
        .iter()
        .map(|k| format!("{prefix}{k}"))
        .chain([format!("{base}x:s:a")])
    {
        let (key, claim) = claimed(key).await;
        let fence = store.complete(&key, &claim, &payload, ttl).await.unwrap();
        assert_eq!(fence, Fence::Held, "{key}");
    }
    let all = match store.stats(&prefix, 100).await {
        // The trait's default: this store does not count its records.
        Err(error)
            if error.kind() == crate::StoreErrorKind::Other
                && error.to_string().contains("does not support stats") =>
        {
            return;
        }
        other => other.unwrap(),
    };
    assert_eq!(
        (all.in_progress, all.completed, all.exact),
        (1, 3, true),
        "{all:?}"
    );
    if let Some(scopes) = &all.scopes {
        let counted: Vec<(&str, u64, u64)> = scopes
            .iter()
            .map(|scope| (scope.scope.as_str(), scope.in_progress, scope.completed))
            .collect();
        assert_eq!(counted, [("s", 1, 2), (r"t\:x.y", 0, 1)], "{all:?}");
        assert_eq!(scopes[1].name().as_deref(), Some("t:x::y"));
    }
    let sample = store.stats(&prefix, 2).await.unwrap();
    assert_eq!((sample.total(), sample.exact), (2, false), "{sample:?}");
    if let Some(scopes) = &sample.scopes {
        let counted: u64 = scopes.iter().map(|scope| scope.total()).sum();
        assert_eq!(counted, 2, "{sample:?}");
    }
}

/// Writes one `#[tokio::test]` per conformance case (see [`testing`](crate::testing)).
///
/// `$make` is an async expression returning `(store, guard)`: the store (anything
/// `Into<StoreHandle>`) and a value kept alive until the case ends.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@cases $make;
                exactly_once_under_concurrency,
                many_keys_with_duplicates,
                replays_equal_values,
                fingerprint_mismatch,
                waiter_gets_result,
                reject_without_wait,
                lease_expiry_fences_late_completion,
                derived_keys_survive_a_takeover,
                steps_replay_after_a_takeover,
                abandoned_attempts_fail_or_rerun,
                renewal_keeps_long_body_exclusive,
                errors_release_and_cache_err_stores,
                panic_releases_claim,
                dropped_future_releases_claim,
                corrupt_record_is_decode_error,
                ttl_expiry_runs_again,
                fenced_operations,
                long_and_hashed_keys,
                unstorable_result_is_reported_never_rerun,
                inspect_and_forget,
                stats_count_by_state,
                tokens_redeem_once_under_concurrency,
                tokens_unknown_and_expired_are_refused,
                tokens_redeemed_duplicate_replays,
                tokens_bound_and_count,
            );
        }
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let (store, _guard) = $make.await;
                // Every wait of a case is bounded; this bounds the case too, so that one
                // never hangs a test run.
                ::tokio::time::timeout(
                    ::std::time::Duration::from_secs(300),
                    $crate::testing::$case($crate::StoreHandle::from(store)),
                )
                .await
                .expect(concat!(
                    "the conformance case `",
                    stringify!($case),
                    "` did not end within 300 s: something it awaited never came"
                ));
            }
        )*
    };
}
