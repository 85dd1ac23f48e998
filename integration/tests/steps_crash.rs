//! Worker processes SIGKILLed at random while they place orders whose bodies have three
//! recorded steps (`idem::step`): reserve, charge (at a gateway that deduplicates by the key
//! `idem::derive_key` gives), notify. On Redis, PostgreSQL, and a SQLite file shared by the
//! processes.
//!
//! This test binary has no libtest harness (`harness = false`): run normally, it starts the
//! store and two copies of itself as workers (`IDEM_STEPS_WORKER` set to the store's URL).
//! Each worker walks every order in its own random order, one call at a time, with a short
//! lease, so that the orders a killed worker held are taken over by the other one. The test is
//! the gateway: a worker's `charge <order> <key>` line is a request reaching it, and it
//! applies one charge per key. Its lines:
//! - `ran <order> <step>` when a step's future starts (the step's effect begins; the output
//!   of `reserve` and `notify` names the process, so two runs that both returned would show
//!   two outputs),
//! - `did <order> <step> <output>` when the step returned (recorded, or replayed),
//! - `charge <order> <idempotency key>` when the charge reaches the gateway,
//! - `attempt <order>` when a body starts (the first attempt, or one that took the order over
//!   from a killed worker, or a retry of a call whose step lost its claim),
//! - `order <order>` when the call returned, `done <pid>` at the end of the list.
//!
//! A last round on Redis runs the same workers with `abandoned = fail` (`Call::abandoned`): an
//! order whose attempt a kill cut short is never run again (`abandoned <order>`); the test
//! counts them, checks that no step ran twice, then resolves them by hand as an operator
//! would: half forgotten (the next call runs the order as attempt 1), half completed with a
//! value (the next call replays it).
//!
//! Besides its assertions it prints the contrast: how many charges a body without recorded
//! steps and with a new key per attempt would have sent again (each re-run of the charge step,
//! and each later attempt that replayed it instead of running it, would have been a new
//! charge).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use idem::{Call, Config, Idem};
use support::crash::{self, Lines, Random};
use support::postgres::PostgresServer;
use support::redis::RedisServer;
use support::sqlite::TempDb;
use support::workers::Workers;

/// Set in a worker's environment to the store's URL.
const WORKER: &str = "IDEM_STEPS_WORKER";
/// Set in a worker's environment (to anything) for the round with `abandoned = fail`.
const FAIL: &str = "IDEM_STEPS_FAIL";
const ORDERS: u64 = 500;
const STEPS: [&str; 3] = ["reserve", "charge", "notify"];
const MIN_KILLS: usize = 30;
/// The kills stop after this long, or once `MIN_KILLS` happened and half of it passed.
const KILLING: Duration = Duration::from_secs(12);
/// Short, so that a killed worker's orders are taken over soon.
const LEASE: Duration = Duration::from_millis(400);
const SCOPE: &str = "steps-crash";

fn main() {
    if let Ok(url) = std::env::var(WORKER) {
        worker(&url);
        return;
    }
    support::harness::run_single(
        "killed_workers_never_run_a_completed_step_again",
        killed_workers_never_run_a_completed_step_again,
    );
}

/// What the test saw of each order.
#[derive(Default)]
struct Orders {
    /// How many times each step's future started, by order and step.
    ran: BTreeMap<(u64, String), usize>,
    /// The outputs each step returned, by order and step.
    outputs: BTreeMap<(u64, String), BTreeSet<String>>,
    /// How many times each step returned (ran, or replayed by a later attempt).
    returned: BTreeMap<(u64, String), usize>,
    /// The bodies started, by order.
    attempts: BTreeMap<u64, usize>,
    /// The keys the gateway saw per order.
    charge_keys: BTreeMap<u64, BTreeSet<String>>,
    /// The requests the gateway got.
    requests: usize,
    /// The orders whose call returned.
    placed: HashSet<u64>,
    /// The orders a worker found abandoned (`abandoned = fail`).
    abandoned: HashSet<u64>,
    done: HashSet<u32>,
}

impl Lines for Orders {
    fn take(&mut self, line: &str) {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ran", order, step] => {
                let key = (order.parse().expect("an order"), (*step).to_owned());
                *self.ran.entry(key).or_default() += 1;
            }
            ["did", order, step, output] => {
                let key = (order.parse().expect("an order"), (*step).to_owned());
                *self.returned.entry(key.clone()).or_default() += 1;
                self.outputs
                    .entry(key)
                    .or_default()
                    .insert((*output).to_owned());
            }
            ["attempt", order] => {
                *self
                    .attempts
                    .entry(order.parse().expect("an order"))
                    .or_default() += 1;
            }
            ["charge", order, key] => {
                self.requests += 1;
                self.charge_keys
                    .entry(order.parse().expect("an order"))
                    .or_default()
                    .insert((*key).to_owned());
            }
            ["order", order] => {
                self.placed.insert(order.parse().expect("an order"));
            }
            ["abandoned", order] => {
                self.abandoned.insert(order.parse().expect("an order"));
            }
            ["done", pid] => {
                self.done.insert(pid.parse().expect("a process id"));
            }
            _ => panic!("a worker printed {line:?}"),
        }
    }

    fn done(&self, pid: u32) -> bool {
        self.done.contains(&pid)
    }
}

fn killed_workers_never_run_a_completed_step_again() {
    let redis = RedisServer::start();
    let postgres = PostgresServer::quiet();
    let file = TempDb::new("steps-crash");
    for (store, url) in [
        ("redis", redis.url()),
        ("postgres", postgres.url()),
        ("sqlite", file.url()),
    ] {
        let mut workers = Workers::start_quiet(2, [(WORKER, url)]);
        let mut orders = Orders::default();
        let (kills, killing) = crash::kill_at_random(&mut workers, &mut orders, MIN_KILLS, KILLING);
        crash::finish(workers, &mut orders, Duration::from_secs(90));
        let reruns: usize = orders.ran.values().map(|n| n - 1).sum();
        let charged: usize = orders.charge_keys.values().map(BTreeSet::len).sum();
        let again = |counts: &BTreeMap<(u64, String), usize>, step: &str| -> usize {
            counts
                .iter()
                .filter(|((_, name), _)| name == step)
                .map(|(_, n)| n - 1)
                .sum()
        };
        let ran_total: usize = orders.ran.values().sum();
        // Each step returned once from the run that completed it; every other return is a
        // later attempt's replay.
        let replayed = again(&orders.returned, "reserve")
            + again(&orders.returned, "charge")
            + again(&orders.returned, "notify");
        let takeovers: usize = orders.attempts.values().map(|n| n - 1).sum();
        // Without steps every attempt that gets that far runs the charge: each re-run of the
        // step and each later attempt that replayed it would have sent one more; with a new
        // key per attempt, each of those is charged again.
        let charged_again = again(&orders.ran, "charge") + again(&orders.returned, "charge");
        println!(
            "steps crash test on {store}: {kills} SIGKILLs in {killing:.1?}, {ORDERS} orders placed, \
             {takeovers} bodies started again (taken over, or retried); step futures started \
             {ran_total} times for {} steps ({reruns} re-runs of a step a kill cut short), \
             {replayed} steps replayed by a later attempt; the gateway got {} requests and \
             charged {charged} times. Without recorded steps and derived keys about \
             {charged_again} charges would have been sent again with new keys",
            orders.ran.len(),
            orders.requests,
        );
        assert!(
            orders.abandoned.is_empty(),
            "no policy: nothing is abandoned"
        );
        assert!(kills >= MIN_KILLS, "{kills} kills");
        // Kills that never cut a call would prove nothing: some bodies started again.
        assert!(takeovers > 0, "{kills} kills and no body started again");
        assert_eq!(orders.placed.len() as u64, ORDERS, "every order was placed");
        for order in 0..ORDERS {
            for step in STEPS {
                let key = (order, step.to_owned());
                let outputs = orders.outputs.get(&key);
                assert_eq!(
                    outputs.map(BTreeSet::len),
                    Some(1),
                    "order {order} step {step}: one output, whoever returned it: {outputs:?}"
                );
            }
        }
        // A worker runs one step at a time: a kill cuts at most one step short, and a step
        // that returned once is replayed, never run again (its one output above).
        assert!(
            reruns <= kills,
            "{reruns} re-runs of steps for {kills} kills: a completed step ran again"
        );
        assert_eq!(orders.ran.len() as u64, ORDERS * STEPS.len() as u64);
        assert_eq!(
            charged, ORDERS as usize,
            "the gateway charged each order once: every attempt sent the same key"
        );
        assert!(
            orders.charge_keys.values().all(|keys| keys.len() == 1),
            "one key per order's charge"
        );
    }
    abandoned_orders_are_never_run_again(&RedisServer::start().url());
}

/// The round with `abandoned = fail`, on Redis: the orders a kill cut short end abandoned, no
/// step runs twice, and an operator resolves them.
fn abandoned_orders_are_never_run_again(url: &str) {
    let mut workers = Workers::start_quiet(2, [(WORKER, url), (FAIL, "1")]);
    let mut orders = Orders::default();
    let (kills, killing) = crash::kill_at_random(&mut workers, &mut orders, MIN_KILLS, KILLING);
    crash::finish(workers, &mut orders, Duration::from_secs(90));
    let abandoned = orders.abandoned.len();
    println!(
        "steps crash test on redis with abandoned = fail: {kills} SIGKILLs in {killing:.1?}; \
         {} orders placed, {abandoned} abandoned (a kill cut their attempt short); step futures \
         started {} times for {} steps, the gateway charged {} times",
        orders.placed.len(),
        orders.ran.values().sum::<usize>(),
        orders.ran.len(),
        orders
            .charge_keys
            .values()
            .map(BTreeSet::len)
            .sum::<usize>(),
    );
    assert!(kills >= MIN_KILLS, "{kills} kills");
    assert!(abandoned > 0, "{kills} kills and no order abandoned");
    assert_eq!(
        orders.placed.len() + abandoned,
        ORDERS as usize,
        "every order placed or abandoned, never both"
    );
    assert!(orders.placed.is_disjoint(&orders.abandoned));
    assert!(
        orders.ran.values().all(|&n| n == 1),
        "no step ran twice: an abandoned attempt is never run again"
    );
    assert!(orders.charge_keys.values().all(|keys| keys.len() == 1));

    // The operator: forgets half of them (they run again, as attempt 1), completes the others
    // by hand (their next call replays the operator's value).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let idem = Idem::connect(&Config::default().store(url))
            .await
            .expect("the store");
        let mut sorted: Vec<u64> = orders.abandoned.iter().copied().collect();
        sorted.sort_unstable();
        for (n, order) in sorted.into_iter().enumerate() {
            let call = || {
                idem.scope(
                    Call::new(SCOPE, order)
                        .abandoned(idem::Abandoned::Fail)
                        .run_result(async move {
                            let attempt = idem::call_context().and_then(|call| call.attempt());
                            Ok::<_, idem::Error>(format!("attempt-{}", attempt.unwrap_or(0)))
                        }),
                )
            };
            match call().await {
                Err(idem::Error::Abandoned { attempt: 1, .. }) => {}
                other => panic!("order {order}: expected Error::Abandoned, got {other:?}"),
            }
            let inspected = idem
                .scope(idem::inspect(SCOPE, order))
                .await
                .expect("inspect");
            assert!(
                matches!(inspected, idem::Inspection::Abandoned { attempt: 1, .. }),
                "order {order}: {inspected:?}"
            );
            let expected = if n % 2 == 0 {
                assert!(
                    idem.scope(idem::forget(SCOPE, order))
                        .await
                        .expect("forget")
                );
                "attempt-1".to_owned()
            } else {
                let value = serde_json::json!(format!("settled-{order}"));
                idem.scope(idem::complete(
                    SCOPE,
                    order,
                    value,
                    Duration::from_secs(600),
                ))
                .await
                .expect("complete by hand");
                format!("settled-{order}")
            };
            let resolved = call().await.expect("a resolved order's call");
            assert_eq!(
                resolved.value.expect("its value"),
                expected,
                "order {order}"
            );
        }
    });
}

/// Places every order in a random order, one at a time; prints what its steps do.
fn worker(url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let config = Config::default().store(url);
        let idem = Idem::connect(&config).await.expect("the store");
        let fail = std::env::var_os(FAIL).is_some();
        let mut random = Random::new();
        let mut orders: Vec<u64> = (0..ORDERS).collect();
        random.shuffle(&mut orders);
        for order in orders {
            let pause = Duration::from_millis(random.below(8));
            // A step whose claim was lost while it ran (this process stalled past its lease
            // under load) is Error::InProgress: the call is tried again, and replays.
            let mut tries = 0;
            let placed = loop {
                let mut call = Call::new(SCOPE, order)
                    .lease(LEASE)
                    .wait(Duration::from_secs(30));
                if fail {
                    call = call.abandoned(idem::Abandoned::Fail);
                }
                let placed = match idem.scope(call.run_result(place_order(order, pause))).await {
                    Ok(placed) => placed,
                    Err(idem::Error::Abandoned { .. }) if fail => break false,
                    Err(error) => panic!("order {order}: {error}"),
                };
                match placed.value {
                    Ok(_) => break true,
                    Err(idem::Error::InProgress { .. }) if tries < 20 => tries += 1,
                    Err(error) => panic!("order {order}: {error}"),
                }
            };
            if placed {
                println!("order {order}");
            } else {
                println!("abandoned {order}");
            }
        }
    });
    println!("done {}", std::process::id());
}

/// The body: three steps, each printing when its future starts and when it returned.
async fn place_order(order: u64, pause: Duration) -> Result<String, idem::Error> {
    println!("attempt {order}");
    let mut outputs = Vec::new();
    for step in STEPS {
        let output = idem::step(step, async move {
            println!("ran {order} {step}");
            tokio::time::sleep(pause).await;
            match step {
                "charge" => {
                    let key = idem::derive_key("charge").expect("inside the call");
                    println!("charge {order} {key}");
                    key
                }
                _ => format!("{step}-{order}-{}", std::process::id()),
            }
        })
        .await?;
        println!("did {order} {step} {output}");
        outputs.push(output);
    }
    Ok(outputs.join(","))
}
