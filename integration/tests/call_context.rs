//! What a body knows of its call and what a caller learns of how it ended, through the
//! attribute: `idem::call_context`, `idem::derive_key` and `idem::with_status`, and the
//! contrast the README draws: a charge re-sent after a takeover reaches a deduplicating
//! gateway with the same key (charged once) when the key is derived, with a new one (charged
//! twice) when it is not.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::{Call, Config, Idem, MemoryStore, Status, idempotent};

fn memory() -> Idem {
    Idem::with_settings(MemoryStore::new(), &Config::default())
}

#[idempotent(key = order, ttl = "1h", scope = "ctx::inner")]
async fn inner(order: &str) -> (String, String) {
    let call = idem::call_context().expect("the inner body sees its own call");
    (call.scope().to_owned(), idem::derive_key("charge").unwrap())
}

#[idempotent(key = order, ttl = "1h", scope = "ctx::outer")]
async fn outer(order: &str, inner_order: &str) -> (String, String, String) {
    let call = idem::call_context().expect("the outer body sees its call");
    // Inside a body, with_status reports the calls that body awaits.
    let (inner_value, inner_status) = idem::with_status(inner(inner_order)).await;
    let (inner_scope, _) = inner_value.expect("the inner call");
    assert_eq!(inner_scope, "ctx::inner");
    let after = idem::call_context().expect("the outer call again after the inner one");
    assert_eq!(after, call, "the inner call's context ends with its body");
    (
        call.scope().to_owned(),
        call.key().to_owned(),
        format!(
            "{:?}",
            inner_status.expect("the inner call returned a value")
        ),
    )
}

#[idempotent(key = order, ttl = "1h", scope = "ctx::stalled")]
async fn stalled(order: &str, inner_done: tokio::sync::mpsc::UnboundedSender<()>) -> u32 {
    inner(order).await.unwrap();
    inner_done.send(()).unwrap();
    std::future::pending().await
}

#[tokio::test]
async fn with_status_reports_the_calls_the_caller_awaits_not_those_inside_their_bodies() {
    let idem = memory();
    idem.scope(async {
        let (first, status) = idem::with_status(outer("o1", "i1")).await;
        let first = first.unwrap();
        assert_eq!(status, Some(Status::Executed));
        assert_eq!(first.0, "ctx::outer");
        assert_eq!(first.1, "idem:ctx.outer:o1");
        assert_eq!(first.2, "Executed", "the inner call ran");

        // A new outer key whose inner call replays: the caller learns of the outer call only.
        let (second, status) = idem::with_status(outer("o2", "i1")).await;
        let second = second.unwrap();
        assert_eq!(
            status,
            Some(Status::Executed),
            "not the inner call's Replayed"
        );
        assert_eq!(second.2, "Replayed", "the body learns of its inner call");

        let (replayed, status) = idem::with_status(outer("o1", "i1")).await;
        assert_eq!(status, Some(Status::Replayed));
        assert_eq!(replayed.unwrap(), first);

        // Several calls: the last one that returned a value.
        let (_, status) = idem::with_status(async {
            inner("i9").await.unwrap();
            inner("i1").await.unwrap()
        })
        .await;
        assert_eq!(status, Some(Status::Replayed));
        let (_, status) = idem::with_status(async { 5 }).await;
        assert_eq!(status, None, "no idempotent call");

        // A call dropped after its body's inner call ended: the caller's call never ended, so
        // there is nothing to report (the inner call's status is not its caller's).
        let (inner_done, mut is_inner_done) = tokio::sync::mpsc::unbounded_channel();
        let (_, status) = idem::with_status(async {
            tokio::select! {
                _ = stalled("o5", inner_done) => unreachable!("the body never ends"),
                _ = is_inner_done.recv() => {}
            }
        })
        .await;
        assert_eq!(status, None, "the inner call is not reported");
    })
    .await;
    assert!(idem::call_context().is_none());
}

#[tokio::test]
async fn derived_keys_are_the_same_for_the_same_call_and_differ_across_calls() {
    let idem = memory();
    let (a, b) = idem
        .scope(async { (inner("k1").await.unwrap(), inner("k2").await.unwrap()) })
        .await;
    assert_ne!(a.1, b.1);
    // Another process (another idem) with the same prefix derives the same keys: the key is
    // the call's, not the process's.
    let again = memory().scope(inner("k1")).await.unwrap();
    assert_eq!(again.1, a.1);
    // Another prefix is another deployment: other records, other keys.
    let other = Idem::with_settings(MemoryStore::new(), &Config::default().prefix("staging"))
        .scope(inner("k1"))
        .await
        .unwrap();
    assert_ne!(other.1, a.1);
}

/// A payment gateway that deduplicates by `Idempotency-Key`, as Stripe does: it counts the
/// requests each key sent and applies one effect per key.
#[derive(Default)]
struct Gateway {
    requests: HashMap<String, usize>,
    charged: HashSet<String>,
}

impl Gateway {
    fn charge(gateway: &Mutex<Gateway>, idempotency_key: String) {
        let mut gateway = gateway.lock().unwrap();
        *gateway.requests.entry(idempotency_key.clone()).or_default() += 1;
        gateway.charged.insert(idempotency_key);
    }
}

/// `orders` orders, each charged by a first attempt that stalls past its lease after the
/// gateway call (a crashed or paused worker) and by the attempt that takes its key over. The
/// idempotency key of the charge is `key_of()`, called in the body. Returns the gateway.
async fn stalled_then_taken_over(orders: usize, key_of: fn() -> String) -> Gateway {
    let idem = memory();
    let gateway = Arc::new(Mutex::new(Gateway::default()));
    let lease = Duration::from_millis(30);
    for order in 0..orders {
        let call = || {
            Call::new("checkout::charge", format!("order-{order}"))
                .lease(lease)
                .heartbeat(false)
                .wait(Duration::ZERO)
        };
        let (charged, is_charged) = tokio::sync::oneshot::channel();
        let first = tokio::spawn(idem.scope({
            let gateway = gateway.clone();
            call().run(async move {
                Gateway::charge(&gateway, key_of());
                let _ = charged.send(());
                // The worker stalls here: its lease ends, it never completes.
                std::future::pending::<u64>().await
            })
        }));
        is_charged
            .await
            .expect("the first attempt reaches the gateway");
        // The clock is paused: this is the lease passing, not a wait.
        tokio::time::sleep(lease * 2).await;
        let second = idem
            .scope(call().run({
                let gateway = gateway.clone();
                async move {
                    Gateway::charge(&gateway, key_of());
                    1250_u64
                }
            }))
            .await
            .expect("the second attempt takes the key over");
        assert_eq!((second.value, second.status), (1250, Status::Executed));
        first.abort();
    }
    // The aborted first attempts may still hold a reference for a moment.
    std::mem::take(&mut *gateway.lock().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_charge_re_sent_after_a_takeover_is_charged_once_with_a_derived_key() {
    let orders = 20;
    let derived = stalled_then_taken_over(orders, || idem::derive_key("charge").unwrap()).await;
    let fresh =
        stalled_then_taken_over(orders, || format!("{:032x}", rand::random::<u128>())).await;
    let sent = |g: &Gateway| g.requests.values().sum::<usize>();
    println!(
        "{orders} orders, each charged by an attempt that stalled and the one that took over: \
         derived keys: {} requests, {} charges; a new key per attempt: {} requests, {} charges",
        sent(&derived),
        derived.charged.len(),
        sent(&fresh),
        fresh.charged.len()
    );
    assert_eq!(sent(&derived), 2 * orders);
    assert_eq!(derived.charged.len(), orders, "each order charged once");
    assert!(
        derived.requests.values().all(|&n| n == 2),
        "both attempts of an order sent the same key"
    );
    assert_eq!(sent(&fresh), 2 * orders);
    assert_eq!(
        fresh.charged.len(),
        2 * orders,
        "without a derived key, every takeover charges again"
    );
}

#[tokio::test]
async fn a_step_outside_a_body_or_inside_another_step_is_a_config_error() {
    let outside = idem::step("charge", async { 1 }).await;
    assert!(
        matches!(&outside, Err(idem::Error::Config(m)) if m.contains("outside the body")),
        "{outside:?}"
    );
    let nested = memory()
        .scope(Call::new("ctx::nested", "k").run(async {
            idem::step("outer", async {
                let inner = idem::step("inner", async { 1 }).await;
                // The step's future sees its call, and derives the call's keys.
                let derived = idem::derive_key("charge").unwrap();
                (format!("{inner:?}"), derived)
            })
            .await
            .unwrap()
        }))
        .await
        .unwrap();
    assert!(
        nested.value.0.contains("steps do not nest"),
        "{}",
        nested.value.0
    );
    let expected = memory()
        .scope(Call::new("ctx::nested", "k").run(async { idem::derive_key("charge").unwrap() }))
        .await
        .unwrap();
    assert_eq!(nested.value.1, expected.value);
}

#[tokio::test]
async fn the_recorded_steps_of_a_call_are_bounded() {
    let big = "x".repeat(idem::STEP_BYTES_LIMIT / 2);
    let result = memory()
        .scope(Call::new("ctx::bounded", "k").run(async {
            let a = idem::step("a", async { big.clone() })
                .await
                .map(|s| s.len());
            let b = idem::step("b", async { big.clone() })
                .await
                .map(|s| s.len());
            (format!("{a:?}"), format!("{b:?}"))
        }))
        .await
        .unwrap();
    assert_eq!(result.value.0, format!("Ok({})", big.len()));
    assert!(
        result.value.1.starts_with("Err(StepsTooLarge"),
        "the step past the bound: {}",
        result.value.1
    );
}

/// A step and its records are stored under a key no call can have: the same scope with a
/// client-chosen key made to look like a step's never reaches it.
#[tokio::test]
async fn no_call_key_reaches_a_step_record() {
    let store = MemoryStore::new();
    let idem = Idem::with_settings(store.clone(), &Config::default());
    let recorded = idem
        .scope(
            Call::new("ctx::keys", "o")
                .run(async { idem::step("charge", async { 1_u32 }).await.unwrap() }),
        )
        .await
        .unwrap();
    assert_eq!(recorded.value, 1);
    for key in ["o:1", "#step", "o:#step:1", "#step:ctx.keys:o:1"] {
        for call in [
            Call::new("ctx::keys", key),
            Call::new("#step", key),
            Call::with_parts("ctx::keys", ["o", "1"]),
            Call::with_parts("#step", ["ctx.keys", "o", "1"]),
        ] {
            let other = idem.scope(call.run(async { 2_u32 })).await.unwrap();
            assert_eq!(
                other.value, 2,
                "{key}: a call never replays a step's record"
            );
        }
    }
}

#[tokio::test]
async fn forgetting_a_call_forgets_its_steps() {
    let idem = memory();
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let order = || {
        Call::new("ctx::forget", "o").run(async {
            for name in ["reserve", "charge", "confirm"] {
                idem::step(name, async {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
                .await
                .unwrap();
            }
        })
    };
    idem.scope(async {
        order().await.unwrap();
        assert!(idem::forget("ctx::forget", "o").await.unwrap());
        let again = order().await.unwrap();
        assert_eq!(again.status, Status::Executed);
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            6,
            "every step ran again"
        );
    })
    .await;
}

/// A call with steps is one call in `idem_calls_total`: its steps are not counted as calls.
#[test]
fn a_call_with_steps_is_counted_once() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(memory().scope(async {
            for _ in 0..2 {
                Call::new("ctx::counted", "o")
                    .run(async {
                        for name in ["reserve", "charge", "confirm"] {
                            idem::step(name, async { 1_u8 }).await.unwrap();
                        }
                    })
                    .await
                    .unwrap();
            }
        }));
    });
    let mut counts = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if let ("idem_calls_total", DebugValue::Counter(n)) = (key.name(), value) {
            let outcome = key.labels().find(|l| l.key() == "outcome").unwrap();
            counts.insert(outcome.value().to_owned(), n);
        }
    }
    let expect: HashMap<String, u64> = [("executed".to_owned(), 1), ("replayed".to_owned(), 1)]
        .into_iter()
        .collect();
    assert_eq!(counts, expect);
}

/// Inside a body, `with_status` reports a step it awaits: executed, or replayed from an earlier
/// attempt's record.
#[tokio::test]
async fn with_status_reports_a_step_inside_a_body() {
    let idem = memory();
    let attempt = || {
        Call::new("ctx::step-status", "o").run_result(async {
            let (charge, status) = idem::with_status(idem::step("charge", async { 7_u32 })).await;
            charge.map_err(|e| e.to_string())?;
            // Released: the next attempt runs the body again, and replays the step.
            Err::<(), _>(format!("{status:?}"))
        })
    };
    idem.scope(async {
        let first = attempt().await.unwrap().value.unwrap_err();
        assert_eq!(first, "Some(Executed)");
        let second = attempt().await.unwrap().value.unwrap_err();
        assert_eq!(second, "Some(Replayed)");
    })
    .await;
}

/// A payout that must not be sent twice: a stalled attempt past its lease is abandoned, and
/// the attribute's `abandoned = "fail"` refuses to run the body again.
#[idempotent(key = id, lease = "200ms", abandoned = "fail", scope = "ctx::payout")]
async fn payout(id: u64, started: Option<tokio::sync::oneshot::Sender<()>>) -> Option<u32> {
    let attempt = idem::call_context().and_then(|call| call.attempt());
    if let Some(started) = started {
        // The first attempt tells it began, then never ends: the test drops it.
        let _ = started.send(());
        std::future::pending::<()>().await;
    }
    attempt
}

/// The same with `abandoned = "rerun"`: the next attempt runs, and knows it is the second.
#[idempotent(key = id, lease = "200ms", abandoned = "rerun", scope = "ctx::notify")]
async fn notify(id: u64, started: Option<tokio::sync::oneshot::Sender<()>>) -> Option<u32> {
    let attempt = idem::call_context().and_then(|call| call.attempt());
    if let Some(started) = started {
        // The first attempt tells it began, then never ends: the test drops it.
        let _ = started.send(());
        std::future::pending::<()>().await;
    }
    attempt
}

#[tokio::test]
async fn the_attribute_fails_or_reruns_an_abandoned_attempt_as_it_says() {
    let idem = memory();
    let (started, began) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(idem.scope(payout(1, Some(started))));
    idem::testing::within("the first attempt's body", began)
        .await
        .expect("the first attempt begins");
    first.abort();
    let _ = first.await;
    match idem.scope(payout(1, None)).await {
        Err(idem::Error::Abandoned { attempt, steps, .. }) => {
            assert_eq!((attempt, steps), (1, Some(0)));
        }
        other => panic!("expected Error::Abandoned, got {other:?}"),
    }
    assert_eq!(
        idem.scope(payout(2, None)).await.expect("another key runs"),
        Some(1)
    );

    let (started, began) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(idem.scope(notify(1, Some(started))));
    idem::testing::within("the first attempt's body", began)
        .await
        .expect("the first attempt begins");
    first.abort();
    let _ = first.await;
    let (rerun, status) = idem.scope(idem::with_status(notify(1, None))).await;
    assert_eq!(rerun.expect("the next attempt runs"), Some(2));
    assert_eq!(
        status,
        Some(Status::TookOver),
        "the caller learns the call took an abandoned attempt over"
    );
    assert_eq!(
        idem.scope(notify(3, None)).await.expect("a first attempt"),
        Some(1)
    );
    // A function with no policy marks nothing: its body has no attempt number.
    let plain = idem
        .scope(
            Call::new("ctx::plain", 1)
                .run(async { idem::call_context().and_then(|call| call.attempt()) }),
        )
        .await
        .expect("a call");
    assert_eq!(plain.value, None);
}
