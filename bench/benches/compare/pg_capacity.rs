//! `--only pg-capacity`: what one PostgreSQL primary spends on idem's calls, measured through
//! `PostgresStore` and the transactional mode on a server of the benchmark's own, read from
//! the server's own counters (see `pg_probe.rs`); then bytes per record and the sizing table
//! (`pg_bytes.rs`), expiry (`pg_retention.rs`) and PgBouncer (`pg_bouncer.rs`). Prints
//! Markdown tables; docs/SCALING.md explains them.
//!
//! Bounded: a few minutes at the default scale. `IDEM_PG_SCALE` (default 1) multiplies the
//! call counts; `IDEM_PG_CHURN_SECS` (default 120) is the length of the steady churn.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idem::{Call, PostgresOptions, PostgresStore};
use sqlx::PgPool;
use sqlx::postgres::{PgConnection, PgPoolOptions};

use crate::pg_probe::{CapacityServer, Cost, Probe, load};
use crate::workload::below;

/// The scope of every call.
pub const SCOPE: &str = "bench::capacity";

/// The retention of the records of the cost phases.
pub const TTL: Duration = Duration::from_secs(3600);

/// The callers of the concurrent rows.
pub const CALLERS: usize = 64;

/// Live keys the replays pick from.
const REPLAYED: usize = 1_024;

/// The longest a phase of calls may take, whatever its count.
pub const PHASE_CAP: Duration = Duration::from_secs(20);

/// A key like a UUID's 32 hex digits (random: the primary key's pages are hit at random, as
/// with real idempotency keys).
pub fn key() -> String {
    format!("{:016x}{:016x}", below(u64::MAX), below(u64::MAX))
}

/// A result whose JSON is `bytes` long: a string of random letters (which TOAST's compression
/// cannot shrink).
pub fn result_of(bytes: usize) -> String {
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..bytes.saturating_sub(2))
        .map(|_| LETTERS[below(64) as usize] as char)
        .collect()
}

/// A first call of a new key on `store`, kept for `ttl`.
pub async fn first_call(store: &PostgresStore, ttl: Duration, value: &str) {
    let value = value.to_owned();
    let outcome = Call::new(SCOPE, key())
        .ttl(ttl)
        .store(store.clone())
        .run(async move { value })
        .await
        .expect("a first call");
    assert!(!outcome.replayed());
}

/// A replay of `key`.
async fn replay(store: &PostgresStore, key: &str) {
    let outcome = Call::new(SCOPE, key)
        .ttl(TTL)
        .store(store.clone())
        .run::<String, _>(async { unreachable!("stored") })
        .await
        .expect("a replay");
    assert!(outcome.replayed());
    std::hint::black_box(outcome.value as String);
}

/// A call in the caller's transaction (`run_tx`), committed; its body writes nothing.
async fn tx_call(store: &PostgresStore, app: &PgPool, key: &str, value: &str) -> bool {
    let mut tx = app.begin().await.expect("BEGIN");
    let value = value.to_owned();
    let outcome = Call::new(SCOPE, key)
        .ttl(TTL)
        .store(store.clone())
        .run_tx(&mut tx, async move |_: &mut PgConnection| value)
        .await
        .expect("a call in a transaction");
    tx.commit().await.expect("COMMIT");
    outcome.replayed()
}

/// How many calls, scaled by `IDEM_PG_SCALE`.
pub fn scaled(calls: u64) -> u64 {
    let scale: f64 = std::env::var("IDEM_PG_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((calls as f64 * scale) as u64).max(10)
}

/// Runs `op` `calls` times (at most `PHASE_CAP`) with `callers` concurrent callers; returns
/// how many ran.
pub async fn drive<F, Fut>(callers: usize, calls: u64, op: F) -> u64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + PHASE_CAP;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (op, next, done) = (op.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < calls && Instant::now() < deadline {
                    op().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a caller panicked");
    }
    done.load(Ordering::Relaxed)
}

/// The calls of a phase's warm-up.
pub fn warmup(callers: usize) -> u64 {
    4 * callers as u64 + 50
}

/// One measured phase: `calls` of `op` by `callers`, after a warm-up that prepares the
/// statements on every connection.
pub async fn phase<F, Fut>(
    probe: &mut Probe,
    callers: usize,
    calls: u64,
    matching: &str,
    op: F,
) -> (u64, Cost)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    drive(callers, warmup(callers), op.clone()).await;
    let mark = probe.mark().await;
    let done = drive(callers, calls, op).await;
    (done, probe.cost(&mark, matching).await)
}

/// A row of the per-call table.
pub fn cost_row(name: &str, callers: usize, done: u64, cost: &Cost) -> String {
    let n = done as f64;
    let us = |seconds: f64| seconds * 1e6 / n;
    let server = us(cost.server_cpu);
    let client = us(cost.client_cpu);
    format!(
        "| {name} | {callers} | {done} | {:.0} | {server:.1} | {:.1} | {:.2} | {client:.1} | {:.0} % | {:.0} | {:.0} | {:.3} | {:.1} | {:.2} | {} → {} |",
        n / cost.wall.as_secs_f64(),
        cost.all.exec_ms * 1e3 / n,
        cost.all.calls / n,
        100.0 * server / (server + client),
        1e6 / server,
        cost.wal_bytes / n,
        cost.all.wal_fpi / n,
        cost.all.blocks_hit / n,
        cost.server_cpu / cost.wall.as_secs_f64(),
        cost.load_before,
        cost.load_after,
    )
}

pub const COST_HEADER: &str = "| operation | callers | calls | calls/s (wall) | server CPU µs/call | statement time µs/call | statements/call | client CPU µs/call | server share | calls/s per server core | WAL B/call | full-page images/call | shared blocks hit/call | server cores busy | load (1 min) before → after |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// What the later parts take from the cost rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerCall {
    /// Server CPU of a first call at 64 callers, µs.
    pub first_cpu_us: f64,
    /// Server CPU of a replay at 64 callers, µs.
    pub replay_cpu_us: f64,
    /// WAL of a first call, bytes.
    pub first_wal: f64,
    /// WAL of a first call on a large table just after a checkpoint, bytes.
    pub first_wal_checkpoint: f64,
    /// The same with `wal_compression` on.
    pub first_wal_compressed: f64,
}

/// The whole part.
pub fn run() {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("# PostgreSQL capacity (`--only pg-capacity`)\n");
    println!(
        "machine: {} cores, {}; load (1 min) at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m
                    .trim_start_matches([' ', '\t', ':'])
                    .to_owned())))
            .unwrap_or_default(),
        load()
    );
    let server = CapacityServer::start();
    println!(
        "server: {} on 127.0.0.1:{} (fsync=off, full_page_writes=on, shared_buffers {}, pg_stat_statements); client: one current-thread tokio runtime, the store's pool of 10 connections\n",
        server.psql("SELECT version()"),
        server.port(),
        server.psql("SHOW shared_buffers"),
    );
    runtime.block_on(async {
        let mut probe = Probe::new(&server).await;
        let per_call = costs(&server, &mut probe).await;
        let bytes = crate::pg_bytes::bytes(&server, &mut probe).await;
        let retention = crate::pg_retention::reaper(&server, &mut probe).await;
        crate::pg_retention::partitions(&server, &mut probe).await;
        let churn = crate::pg_retention::churn(&server, &mut probe).await;
        crate::pg_bytes::sizing(&per_call, &bytes, &retention, churn);
        crate::pg_bouncer::rows(&server, &mut probe).await;
    });
    println!(
        "\nrun time {:.0} s; load (1 min) at end {}",
        started.elapsed().as_secs_f64(),
        load()
    );
}

/// Server CPU, statement time, WAL and blocks per call: replay, first call, transactional
/// first call and replay, with one caller and with 64.
async fn costs(server: &CapacityServer, probe: &mut Probe) -> PerCall {
    let options = PostgresOptions::default().reaper_interval(None);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the benchmark's PostgreSQL");
    let app = PgPoolOptions::new()
        .max_connections(10)
        .connect(&server.url())
        .await
        .expect("the application's pool");
    let value = Arc::new(result_of(64));
    let keys: Arc<Vec<String>> = Arc::new((0..REPLAYED).map(|_| key()).collect());
    for key in keys.iter() {
        let value = value.to_string();
        Call::new(SCOPE, key)
            .ttl(TTL)
            .store(store.clone())
            .run(async move { value })
            .await
            .unwrap();
    }
    let tx_keys: Arc<Vec<String>> = Arc::new((0..REPLAYED).map(|_| key()).collect());
    for key in tx_keys.iter() {
        tx_call(&store, &app, key, &value).await;
    }
    println!("## Server cost per call (64-byte result, 32-hex-digit keys)\n");
    println!("{COST_HEADER}");
    let mut per_call = PerCall::default();
    for callers in [1, CALLERS] {
        let calls = if callers == 1 {
            scaled(5_000)
        } else {
            scaled(20_000)
        };
        let op = {
            let (store, keys) = (store.clone(), keys.clone());
            move || {
                let (store, keys) = (store.clone(), keys.clone());
                async move { replay(&store, &keys[below(REPLAYED as u64) as usize]).await }
            }
        };
        let (done, cost) = phase(probe, callers, calls, "idem_records", op).await;
        println!("{}", cost_row("replay", callers, done, &cost));
        if callers == CALLERS {
            per_call.replay_cpu_us = cost.server_cpu * 1e6 / done as f64;
        }
        let op = {
            let (store, value) = (store.clone(), value.clone());
            move || {
                let (store, value) = (store.clone(), value.clone());
                async move { first_call(&store, TTL, &value).await }
            }
        };
        let (done, cost) = phase(probe, callers, calls, "idem_records", op).await;
        println!("{}", cost_row("first call", callers, done, &cost));
        if callers == CALLERS {
            per_call.first_cpu_us = cost.server_cpu * 1e6 / done as f64;
            per_call.first_wal = cost.wal_bytes / done as f64;
        }
        let op = {
            let (store, app, keys, value) =
                (store.clone(), app.clone(), tx_keys.clone(), value.clone());
            move || {
                let (store, app, keys, value) =
                    (store.clone(), app.clone(), keys.clone(), value.clone());
                async move {
                    let key = &keys[below(REPLAYED as u64) as usize];
                    assert!(tx_call(&store, &app, key, &value).await);
                }
            }
        };
        let (done, cost) = phase(probe, callers, calls, "idem_records", op).await;
        println!("{}", cost_row("tx replay (BEGIN, claim, COMMIT)", callers, done, &cost));
        let op = {
            let (store, app, value) = (store.clone(), app.clone(), value.clone());
            move || {
                let (store, app, value) = (store.clone(), app.clone(), value.clone());
                async move { assert!(!tx_call(&store, &app, &key(), &value).await) }
            }
        };
        let (done, cost) = phase(probe, callers, calls, "idem_records", op).await;
        println!(
            "{}",
            cost_row(
                "tx first call (BEGIN, claim, complete, COMMIT)",
                callers,
                done,
                &cost
            )
        );
    }
    // WAL after a checkpoint: the first change of a page after it writes the whole page.
    let records = scaled(1_000_000);
    let table = "bench_checkpoint";
    let big = PostgresStore::connect_with(
        &server.url(),
        PostgresOptions::default()
            .table(table)
            .reaper_interval(None),
    )
    .await
    .expect("connect to the benchmark's PostgreSQL");
    probe
        .exec(&format!(
            "INSERT INTO {table} SELECT 'idem:bench.capacity:' || md5(g::text), 'completed', \
             '\\x00112233445566778899aabbccddeeff', NULL, convert_to(repeat('x', 170), 'UTF8'), \
             now() + interval '1 hour' FROM generate_series(1, {records}) g"
        ))
        .await;
    probe.exec(&format!("VACUUM ANALYZE {table}")).await;
    probe.exec("CHECKPOINT").await;
    let op = {
        let (store, value) = (big.clone(), value.clone());
        move || {
            let (store, value) = (store.clone(), value.clone());
            async move { first_call(&store, TTL, &value).await }
        }
    };
    let (done, cost) = phase(probe, CALLERS, scaled(20_000), table, op).await;
    per_call.first_wal_checkpoint = cost.wal_bytes / done as f64;
    println!(
        "{}",
        cost_row(
            &format!("first call on a table of {records} records, just after a CHECKPOINT"),
            CALLERS,
            done,
            &cost
        )
    );
    // The same with the page images compressed (lz4 where the server has it).
    let method = if server.try_psql("SET wal_compression = 'lz4'").contains("ERROR") {
        "pglz"
    } else {
        "lz4"
    };
    probe
        .exec(&format!("ALTER SYSTEM SET wal_compression = '{method}'"))
        .await;
    probe.exec("SELECT pg_reload_conf()").await;
    // Every backend reads the reload at its next statement; the checkpoint follows.
    tokio::time::sleep(Duration::from_millis(200)).await;
    probe.exec("CHECKPOINT").await;
    let op = {
        let (store, value) = (big.clone(), value.clone());
        move || {
            let (store, value) = (store.clone(), value.clone());
            async move { first_call(&store, TTL, &value).await }
        }
    };
    let (done, cost) = phase(probe, CALLERS, scaled(20_000), table, op).await;
    println!(
        "{}",
        cost_row(
            &format!("the same, wal_compression = {method}"),
            CALLERS,
            done,
            &cost
        )
    );
    per_call.first_wal_compressed = cost.wal_bytes / done as f64;
    probe.exec("ALTER SYSTEM RESET wal_compression").await;
    probe.exec("SELECT pg_reload_conf()").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let leaves = probe
        .number(&format!("SELECT pg_relation_size('{table}_pkey')::float8 / 8192"))
        .await;
    println!(
        "\n(that table's primary key has {leaves:.0} pages: with random keys, a first call touches a page no call touched since the checkpoint with a chance of about (pages touched so far / pages), and that change writes the whole 8 KB page to the WAL.)"
    );
    println!(
        "\nserver CPU: utime+stime of every PostgreSQL process (the postmaster, its children, and children that ended), over the phase; client CPU: this process. statement time: pg_stat_statements total_exec_time. WAL: pg_current_wal_lsn moved (the whole server). Load-sensitive: calls/s and, less, the CPU and statement times; not: statements, WAL, blocks."
    );
    per_call
}
