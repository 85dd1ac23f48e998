//! The measuring: warm-up, several samples, medians. Two things compared are sampled in
//! turn (baseline, subject, baseline, subject…), so that a change of load during the run
//! touches both alike.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long and how often to sample.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Throughput samples of each measured thing.
    pub samples: usize,
    /// Latency samples of each measured thing: more and shorter than the throughput ones,
    /// because one caller's round trips on this VM swing between regimes (10 µs to 150 µs
    /// on loopback) within a second, and the median of many short samples taken in turn
    /// with the baseline moves much less than the one of a few long ones.
    pub latency_samples: usize,
    /// The length of one latency sample (a batch of calls timed together).
    pub sample_time: Duration,
    /// The length of one throughput sample.
    pub burst_time: Duration,
    /// Run before the samples, also to size the batches.
    pub warmup: Duration,
}

impl Plan {
    /// The plan of a full run.
    pub fn full() -> Self {
        Plan {
            samples: 11,
            latency_samples: 41,
            sample_time: Duration::from_millis(10),
            burst_time: Duration::from_millis(250),
            warmup: Duration::from_millis(150),
        }
    }

    /// A short run, to check that everything works (`--quick`).
    pub fn quick() -> Self {
        Plan {
            samples: 3,
            latency_samples: 5,
            sample_time: Duration::from_millis(5),
            burst_time: Duration::from_millis(50),
            warmup: Duration::from_millis(20),
        }
    }
}

/// The samples of one measured thing and their median.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The median of the samples.
    pub median: f64,
    /// The smallest and the largest sample.
    pub min: f64,
    pub max: f64,
    pub samples: usize,
    /// For a thing sampled in turn with a baseline: the median of its samples each divided
    /// by the baseline's sample taken just before it, and of their differences. Each pair is
    /// measured within a few milliseconds, so a change of the machine's speed between
    /// pairs cancels out; the table's ratio and overhead are these.
    pub paired_ratio: Option<f64>,
    pub paired_difference: Option<f64>,
}

impl Stats {
    pub fn of(mut values: Vec<f64>) -> Stats {
        assert!(!values.is_empty(), "no samples");
        values.sort_by(f64::total_cmp);
        Stats {
            median: median_of_sorted(&values),
            min: values[0],
            max: values[values.len() - 1],
            samples: values.len(),
            paired_ratio: None,
            paired_difference: None,
        }
    }

    /// The stats of `subject` with its pairing to `base`, sample by sample.
    fn paired(base: &[f64], subject: Vec<f64>) -> Stats {
        let ratios = Stats::of(base.iter().zip(&subject).map(|(b, s)| s / b).collect());
        let differences = Stats::of(base.iter().zip(&subject).map(|(b, s)| s - b).collect());
        Stats {
            paired_ratio: Some(ratios.median),
            paired_difference: Some(differences.median),
            ..Stats::of(subject)
        }
    }
}

fn median_of_sorted(values: &[f64]) -> f64 {
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    assert!(!values.is_empty(), "no samples");
    values.sort();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Runs `op` for the warm-up time and returns how many calls fill one sample.
async fn batch_size<F: AsyncFnMut()>(op: &mut F, plan: &Plan) -> u64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < plan.warmup {
        op().await;
        n += 1;
    }
    let per_call = start.elapsed().as_secs_f64() / n as f64;
    ((plan.sample_time.as_secs_f64() / per_call) as u64).max(1)
}

/// Nanoseconds per call of one batch of `n` calls.
async fn sample<F: AsyncFnMut()>(op: &mut F, n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        op().await;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// The latency (ns per call) of `op`, one caller.
pub async fn latency<F: AsyncFnMut()>(plan: &Plan, mut op: F) -> Stats {
    let n = batch_size(&mut op, plan).await;
    let mut values = Vec::with_capacity(plan.latency_samples);
    for _ in 0..plan.latency_samples {
        values.push(sample(&mut op, n).await);
    }
    Stats::of(values)
}

/// The latencies (ns per call) of `base` and `subject`, sampled in turn.
pub async fn latency_pair<B: AsyncFnMut(), S: AsyncFnMut()>(
    plan: &Plan,
    mut base: B,
    mut subject: S,
) -> (Stats, Stats) {
    let nb = batch_size(&mut base, plan).await;
    let ns = batch_size(&mut subject, plan).await;
    let (mut b, mut s) = (Vec::new(), Vec::new());
    for _ in 0..plan.latency_samples {
        b.push(sample(&mut base, nb).await);
        s.push(sample(&mut subject, ns).await);
    }
    let subject = Stats::paired(&b, s);
    (Stats::of(b), subject)
}

/// An operation that many callers run at once.
pub trait Op: Send + Sync + 'static {
    fn call(&self) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> Op for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn call(&self) -> impl Future<Output = ()> + Send {
        self()
    }
}

/// Calls per second of `callers` tasks running `op` in a loop for `time`.
async fn burst<O: Op>(op: &Arc<O>, callers: usize, time: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    op.call().await;
                    done.fetch_add(1, Ordering::Relaxed);
                    // An operation that never waits must still let the clock task run.
                    tokio::task::consume_budget().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a caller panicked");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The throughput (calls/s) of `base` and `subject` with `callers` concurrent callers each,
/// sampled in turn.
pub async fn throughput_pair<B: Op, S: Op>(
    plan: &Plan,
    callers: usize,
    base: B,
    subject: S,
) -> (Stats, Stats) {
    let (base, subject) = (Arc::new(base), Arc::new(subject));
    burst(&base, callers, plan.warmup).await;
    burst(&subject, callers, plan.warmup).await;
    let (mut b, mut s) = (Vec::new(), Vec::new());
    for _ in 0..plan.samples {
        b.push(burst(&base, callers, plan.burst_time).await);
        s.push(burst(&subject, callers, plan.burst_time).await);
    }
    let subject = Stats::paired(&b, s);
    (Stats::of(b), subject)
}

/// The throughput (calls/s) of `op` with `callers` concurrent callers.
pub async fn throughput<O: Op>(plan: &Plan, callers: usize, op: O) -> Stats {
    let op = Arc::new(op);
    burst(&op, callers, plan.warmup).await;
    let mut values = Vec::new();
    for _ in 0..plan.samples {
        values.push(burst(&op, callers, plan.burst_time).await);
    }
    Stats::of(values)
}
