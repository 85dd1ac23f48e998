//! A run: the stream and its durable consumer made afresh, two consumer processes started,
//! orders published (some twice), one consumer SIGKILLed at random moments and started again,
//! and, once every message is acked, the figures: from the consumers' lines, the JetStream
//! consumer's state and the orders table.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::AckPolicy, message::PublishMessage, stream};
use tokio::sync::mpsc;

use crate::consumer::{self, BoxError, CONSUMER, Mode, OrderPlaced, Orders, STREAM, SUBJECT};

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Distinct orders published.
    pub orders: usize,
    /// Every n-th order is published again as a new message, after the duplicate window.
    pub republish_every: usize,
    /// Every n-th order is also published again at once, with the same `Nats-Msg-Id`: JetStream
    /// drops these.
    pub in_window_every: usize,
    /// The publishing of the first copies is spread over this long.
    pub publish_over: Duration,
    /// The stream's `duplicate_window`.
    pub duplicate_window: Duration,
    /// The consumer's `ack_wait`.
    pub ack_wait: Duration,
    /// idem's lease (`IDEM_LEASE`); duplicates wait up to `wait` (`IDEM_WAIT`).
    pub lease: Duration,
    /// How long a duplicate waits for a running call.
    pub wait: Duration,
    /// Work after the order is written.
    pub work: Duration,
    /// Messages a consumer process handles at once.
    pub concurrency: usize,
    /// Kills of the second consumer, at least.
    pub min_kills: usize,
    /// The time between two kills, drawn uniformly from this range (milliseconds).
    pub kill_every_ms: (u64, u64),
    /// The whole run fails past this.
    pub deadline: Duration,
}

/// Where a run's servers are.
pub struct Setup {
    /// idem's mode.
    pub mode: Mode,
    /// The NATS server (with JetStream).
    pub nats_url: String,
    /// The orders' database.
    pub database_url: String,
    /// `IDEM_STORE` of the consumers.
    pub store_url: String,
    /// Builds the command of a consumer process: this program, told to be a consumer.
    pub program: fn() -> Command,
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The mode's name.
    pub mode: &'static str,
    /// Distinct orders published.
    pub orders_published: usize,
    /// Messages in the stream (orders, and the re-published copies JetStream kept).
    pub messages: u64,
    /// Re-publishes JetStream dropped as duplicates (same `Nats-Msg-Id` inside its window).
    pub dropped_by_window: usize,
    /// SIGKILLs of a consumer process.
    pub kills: usize,
    /// Deliveries a killed process had begun and not acked.
    pub cut_by_kills: usize,
    /// Deliveries, by the JetStream consumer's count.
    pub deliveries: u64,
    /// Deliveries the consumers saw with a delivery count above 1.
    pub redeliveries_seen: usize,
    /// Acks the consumers sent and JetStream confirmed.
    pub acked: usize,
    /// Handled deliveries whose call ran the body (the order write).
    pub executions_acked: usize,
    /// Handled deliveries whose call replayed an earlier result: duplicates skipped.
    pub duplicates_skipped: usize,
    /// Calls that spent over 50 ms before their body or replay, waiting for another holder.
    pub waits: usize,
    /// The time they spent so.
    pub waited: Duration,
    /// Calls that failed (message not acked, delivered again).
    pub failed: usize,
    /// Rows in the orders table: order writes committed.
    pub rows: u64,
    /// Distinct orders in the table.
    pub orders: u64,
    /// Messages the JetStream consumer still had pending or unacked at the end.
    pub unacked: u64,
    /// From the first publish to the last ack.
    pub wall: Duration,
}

impl Report {
    /// Orders written more than once (rows beyond one per order).
    pub fn written_twice(&self) -> u64 {
        self.rows - self.orders
    }
}

/// The reports side by side, one column per mode.
pub fn table(reports: &[Report]) -> String {
    type Row = (&'static str, fn(&Report) -> String);
    let rows: &[Row] = &[
        ("orders published", |r| r.orders_published.to_string()),
        ("messages in the stream", |r| r.messages.to_string()),
        ("re-publishes dropped by JetStream", |r| {
            r.dropped_by_window.to_string()
        }),
        ("kills (SIGKILL)", |r| r.kills.to_string()),
        ("deliveries cut by a kill", |r| r.cut_by_kills.to_string()),
        ("deliveries", |r| r.deliveries.to_string()),
        ("redeliveries observed", |r| r.redeliveries_seen.to_string()),
        ("acks confirmed (consumer lines)", |r| r.acked.to_string()),
        ("executions (order rows written)", |r| r.rows.to_string()),
        ("duplicates skipped (replayed)", |r| {
            r.duplicates_skipped.to_string()
        }),
        ("orders in the database", |r| r.orders.to_string()),
        ("orders written twice", |r| r.written_twice().to_string()),
        ("calls waiting on a held key", |r| r.waits.to_string()),
        ("time lost waiting", |r| format!("{:.1?}", r.waited)),
        ("failed calls (nak)", |r| r.failed.to_string()),
        ("unacked at the end (JetStream)", |r| r.unacked.to_string()),
        ("wall time", |r| format!("{:.1?}", r.wall)),
    ];
    let mut out = format!("{:<36}", "");
    for report in reports {
        let _ = write!(out, "{:>18}", report.mode);
    }
    out.push('\n');
    for (name, value) in rows {
        let _ = write!(out, "{name:<36}");
        for report in reports {
            let _ = write!(out, "{:>18}", value(report));
        }
        out.push('\n');
    }
    out
}

/// A line from a consumer process, or a mark of the harness.
enum Event {
    Line(usize, String),
    Killed(usize),
}

/// A consumer process and the thread reading its lines.
struct Worker {
    child: Child,
    reader: JoinHandle<()>,
}

impl Worker {
    fn start(
        setup: &Setup,
        plan: &Plan,
        index: usize,
        generation: usize,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<Worker, BoxError> {
        let mut child = (setup.program)()
            .env(consumer::ENV_WORKER, format!("c{index}.{generation}"))
            .env(consumer::ENV_MODE, setup.mode.as_str())
            .env(consumer::ENV_NATS, &setup.nats_url)
            .env(consumer::ENV_DATABASE, &setup.database_url)
            .env(consumer::ENV_WORK_MS, plan.work.as_millis().to_string())
            .env(consumer::ENV_CONCURRENCY, plan.concurrency.to_string())
            .env("IDEM_STORE", &setup.store_url)
            .env("IDEM_LEASE", format!("{}ms", plan.lease.as_millis()))
            .env("IDEM_WAIT", format!("{}ms", plan.wait.as_millis()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let events = events.clone();
        let reader = std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = events.send(Event::Line(index, line));
            }
        });
        Ok(Worker { child, reader })
    }

    /// SIGKILL, and every line it printed read.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
    }

    /// Closes stdin (the consumer exits), killing it if it has not within a second.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = self.reader.join();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

/// How a scheduled message relates to the order's first publish.
#[derive(Clone, Copy, PartialEq)]
enum Publish {
    /// The order's first message.
    First,
    /// The same message id again at once: inside JetStream's duplicate window.
    Again,
    /// The same message id again, later than the window after the first publish was acked
    /// (not merely after the time it was planned for: a publisher behind its plan on a loaded
    /// machine must not bring the two inside the window).
    Late,
}

/// The messages to publish, in time order: (when, order, how it relates to the first).
fn schedule(plan: &Plan, run: &str) -> Vec<(Duration, OrderPlaced, Publish)> {
    let mut out = Vec::new();
    for n in 0..plan.orders {
        let at = plan.publish_over.mul_f64(n as f64 / plan.orders as f64);
        let order = OrderPlaced {
            order_id: format!("{run}-{n:05}"),
            customer: format!("customer-{}", n % 97),
            cents: 100 + (n as i64 * 37) % 10_000,
        };
        out.push((at, order.clone(), Publish::First));
        if plan.in_window_every > 0 && n % plan.in_window_every == 1 {
            // A publisher that retried at once after a lost publish ack.
            out.push((at + Duration::from_millis(5), order.clone(), Publish::Again));
        }
        if plan.republish_every > 0 && n % plan.republish_every == 0 {
            // A publisher that retried later, past the duplicate window.
            let late =
                plan.duplicate_window + Duration::from_millis(300 + rand::random_range(0..400));
            out.push((at + late, order, Publish::Late));
        }
    }
    out.sort_by_key(|(at, _, _)| *at);
    out
}

/// Runs `plan` with `setup`'s servers and returns its figures.
pub async fn run(plan: &Plan, setup: &Setup) -> Result<Report, BoxError> {
    let run_id = format!("order-{:08x}", rand::random::<u32>());
    let deadline = Instant::now() + plan.deadline;

    let orders = Orders::connect(setup.mode, &setup.database_url, 2).await?;
    orders.create_tables(setup.mode).await?;

    let jetstream = jetstream::new(async_nats::connect(&setup.nats_url).await?);
    let _ = jetstream.delete_stream(STREAM).await;
    let stream = jetstream
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            duplicate_window: plan.duplicate_window,
            ..Default::default()
        })
        .await?;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: plan.ack_wait,
            max_deliver: -1,
            ..Default::default()
        })
        .await?;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for index in 0..2 {
        workers.push(Some(Worker::start(setup, plan, index, 0, &events_tx)?));
    }
    let mut lines = Vec::new();
    let mut ready = 0;
    while ready < 2 {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .map_err(|_| "the consumers did not start in time")?
            .ok_or("the consumers exited at start")?;
        if let Event::Line(_, line) = &event
            && line == "ready"
        {
            ready += 1;
        }
        lines.push(event);
    }

    let started = Instant::now();
    let publisher = {
        let (jetstream, schedule) = (jetstream.clone(), schedule(plan, &run_id));
        let plan_window = plan.duplicate_window;
        tokio::spawn(async move {
            let mut dropped = 0;
            let mut acked = std::collections::HashMap::new();
            for (at, order, send) in schedule {
                let mut when = started + at;
                if send == Publish::Late {
                    let first: Instant = acked[&order.order_id];
                    when = when.max(first + plan_window + Duration::from_millis(300));
                }
                tokio::time::sleep_until(when.into()).await;
                let publish = PublishMessage::build()
                    .payload(serde_json::to_vec(&order)?.into())
                    .message_id(&order.order_id);
                let ack = jetstream.send_publish(SUBJECT, publish).await?.await?;
                dropped += usize::from(ack.duplicate);
                if send == Publish::First {
                    acked.insert(order.order_id, Instant::now());
                }
            }
            Ok::<usize, BoxError>(dropped)
        })
    };

    // One consumer is killed at random moments and started again, as long as orders are
    // being published and until it was killed `min_kills` times.
    let mut kills = 0;
    while kills < plan.min_kills || !publisher.is_finished() {
        let pause = rand::random_range(plan.kill_every_ms.0..=plan.kill_every_ms.1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if Instant::now() >= deadline {
            return Err(format!("the run took over {:?} ({kills} kills)", plan.deadline).into());
        }
        if let Some(victim) = workers[1].take() {
            victim.kill();
        }
        kills += 1;
        events_tx.send(Event::Killed(1))?;
        workers[1] = Some(Worker::start(setup, plan, 1, kills, &events_tx)?);
    }
    let dropped_by_window = publisher.await??;

    // Every message acked: nothing pending, nothing awaiting an ack, the ack floor at the end.
    let last = stream.clone().info().await?.state.last_sequence;
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(CONSUMER).await?;
    let info = loop {
        let info = consumer.info().await?.clone();
        if info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.stream_sequence == last
        {
            break info;
        }
        if Instant::now() >= deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wall = started.elapsed();
    for worker in workers.into_iter().flatten() {
        worker.stop();
    }
    drop(events_tx);
    while let Some(event) = events.recv().await {
        lines.push(event);
    }

    let mut report = Report {
        mode: setup.mode.name(),
        orders_published: plan.orders,
        messages: last,
        dropped_by_window,
        kills,
        deliveries: info.delivered.consumer_sequence,
        unacked: info.num_pending + info.num_ack_pending as u64,
        wall,
        ..Report::default()
    };
    count_lines(&lines, &mut report)?;
    (report.rows, report.orders) = orders.count(&format!("{run_id}-%")).await?;
    Ok(report)
}

/// Adds up the consumers' lines.
fn count_lines(lines: &[Event], report: &mut Report) -> Result<(), BoxError> {
    // Deliveries begun and not yet acked or failed, per consumer.
    let mut open = [BTreeSet::new(), BTreeSet::new()];
    for event in lines {
        let (index, line) = match event {
            Event::Killed(index) => {
                report.cut_by_kills += open[*index].len();
                open[*index].clear();
                continue;
            }
            Event::Line(index, line) => (*index, line),
        };
        let words: Vec<&str> = line.split(' ').collect();
        let delivery =
            || -> Result<(u64, i64), BoxError> { Ok((words[1].parse()?, words[2].parse()?)) };
        match words[0] {
            "ready" => {}
            "delivery" => {
                let (seq, count) = delivery()?;
                report.redeliveries_seen += usize::from(count > 1);
                open[index].insert((seq, count));
            }
            "acked" => {
                open[index].remove(&delivery()?);
                report.acked += 1;
                match words[3] {
                    "executed" => report.executions_acked += 1,
                    _ => report.duplicates_skipped += 1,
                }
                let before_body = Duration::from_micros(words[4].parse()?);
                if before_body > Duration::from_millis(50) {
                    report.waits += 1;
                    report.waited += before_body;
                }
            }
            "failed" => {
                open[index].remove(&delivery()?);
                report.failed += 1;
            }
            _ => return Err(format!("consumer {index} printed {line:?}").into()),
        }
    }
    Ok(())
}
