//! A waiter's delay: from the end of the first call's body to the return of a duplicate
//! call that was waiting for it. It covers storing the result, waking the waiter and the
//! waiter's replay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idem::{Call, Idem, Status};
use tokio::sync::oneshot;

use crate::measure::quantile;
use crate::report::{Quantity, Report, Target};
use crate::workload::{Receipt, fresh, receipt};

const SCOPE: &str = "bench::waited";

/// `samples` delays of duplicates waiting on `idem`'s store. `settle` lets the duplicate
/// reach its wait before the first call's body ends.
async fn delays(idem: &Idem, samples: usize, settle: Duration) -> Vec<Duration> {
    let mut delays = Vec::with_capacity(samples);
    for attempt in 0.. {
        if delays.len() == samples {
            break;
        }
        assert!(
            attempt < 3 * samples,
            "only {} of {attempt} duplicates found the first call still running",
            delays.len()
        );
        let order = fresh();
        let (started_tx, started) = oneshot::channel();
        let (finish, finish_rx) = oneshot::channel::<()>();
        let done_at = Arc::new(Mutex::new(None));
        let holder = {
            let (idem, done_at) = (idem.clone(), done_at.clone());
            tokio::spawn(async move {
                idem.scope(Call::new(SCOPE, order).run(async move {
                    started_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    let value = receipt(order);
                    *done_at.lock().unwrap() = Some(Instant::now());
                    value
                }))
                .await
                .unwrap()
            })
        };
        started.await.unwrap();
        let waiter = {
            let idem = idem.clone();
            tokio::spawn(async move {
                let outcome = idem
                    .scope(
                        Call::new(SCOPE, order)
                            .run::<Receipt, _>(async { unreachable!("the first call runs") }),
                    )
                    .await
                    .unwrap();
                (outcome.status, Instant::now())
            })
        };
        if settle.is_zero() {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
        } else {
            tokio::time::sleep(settle).await;
        }
        finish.send(()).unwrap();
        let (status, returned) = waiter.await.unwrap();
        assert_eq!(holder.await.unwrap().status, Status::Executed);
        // A duplicate that arrived after the completion replayed without waiting: not a sample.
        if status == Status::Waited {
            let done_at = done_at.lock().unwrap().expect("the body ended");
            delays.push(returned - done_at);
        }
    }
    delays
}

pub async fn rows(report: &mut Report, memory: &Idem, redis: &Idem, quick: bool) {
    report.section("Waiter's delay (end of the first call's body → duplicate returns)");
    let (n_memory, n_redis) = if quick { (100, 50) } else { (2_000, 600) };
    for (name, idem, samples, settle, target) in [
        (
            "memory",
            memory,
            n_memory,
            Duration::ZERO,
            Duration::from_micros(100),
        ),
        (
            "Redis",
            redis,
            n_redis,
            Duration::from_millis(2),
            Duration::from_millis(5),
        ),
    ] {
        let mut d = delays(idem, samples, settle).await;
        let p50 = quantile(&mut d, 0.5);
        let p99 = quantile(&mut d, 0.99);
        report.add(
            &format!("{name}, p50 ({samples} waits)"),
            (Quantity::Nanos(p50.as_nanos() as f64), None),
            None,
            None,
        );
        report.add(
            &format!("{name}, p99"),
            (Quantity::Nanos(p99.as_nanos() as f64), None),
            None,
            Some(Target::AtMost(Quantity::Nanos(target.as_nanos() as f64))),
        );
    }
}
