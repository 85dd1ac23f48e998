//! What expiry costs on PostgreSQL: the reaper's cost per expired record and its effect on
//! calls, dropping a partition instead (a prototype table, not a store option), and a steady
//! churn with the reaper and autovacuum.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idem::{PostgresOptions, PostgresStore};
use sqlx::postgres::PgPoolOptions;

use crate::pg_bytes::sizes;
use crate::pg_capacity::{CALLERS, drive, first_call, result_of, scaled};
use crate::pg_probe::{CapacityServer, Probe, load};

/// A store on its own table, reaper off unless `reaper` says how often.
pub async fn store_on(server: &CapacityServer, table: &str, reaper: Option<Duration>) -> PostgresStore {
    let options = PostgresOptions::default()
        .table(table)
        .reaper_interval(reaper);
    PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the benchmark's PostgreSQL")
}

/// The reaper's cost per record, and what row deletes cost in all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Reaper statement time per deleted record, µs.
    pub reap_exec_us: f64,
    /// Server CPU of the reaping window per deleted record, less the calls' own, µs.
    pub reap_cpu_us: f64,
    pub reap_wal: f64,
    /// Server CPU of the `VACUUM` after it, per deleted record, µs.
    pub vacuum_cpu_us: f64,
    pub vacuum_wal: f64,
    /// Dropping a partition of the same records: server CPU per record, µs; WAL per record.
    pub drop_cpu_us: f64,
    pub drop_wal: f64,
}

/// The latencies of one caller's first calls on `store` until `until` says stop (checked
/// every 100 ms) or `limit` passed.
async fn latencies<U: AsyncFnMut() -> bool>(
    store: &PostgresStore,
    value: &str,
    limit: Duration,
    mut until: U,
) -> Vec<Duration> {
    let start = Instant::now();
    let mut checked = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < limit {
        let at = Instant::now();
        first_call(store, crate::pg_capacity::TTL, value).await;
        out.push(at.elapsed());
        if checked.elapsed() >= Duration::from_millis(100) {
            checked = Instant::now();
            if until().await {
                break;
            }
        }
    }
    out
}

fn percentile(values: &mut [Duration], q: f64) -> f64 {
    crate::measure::quantile(values, q).as_secs_f64() * 1e6
}

/// A backlog of expired records written by idem (64 callers, 1 s ttl, autovacuum off on the
/// table so that the measured `VACUUM` has all of it), copied into a partition of a prototype
/// table; then one caller's first calls without the reaper and while the store's reaper
/// deletes the backlog; then `VACUUM`; then dropping the prototype's partition.
pub async fn reaper(server: &CapacityServer, probe: &mut Probe) -> Retention {
    let backlog = scaled(40_000);
    let table = "bench_reap";
    let writer = store_on(server, table, None).await;
    probe
        .exec(&format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = off)"
        ))
        .await;
    let value = Arc::new(result_of(64));
    let op = {
        let (store, value) = (writer.clone(), value.clone());
        move || {
            let (store, value) = (store.clone(), value.clone());
            async move { first_call(&store, Duration::from_secs(1), &value).await }
        }
    };
    drive(CALLERS, backlog, op).await;
    // Ten times as many, copied in SQL from idem's rows (new keys, same columns).
    probe
        .exec(&format!(
            "INSERT INTO {table} SELECT key || '.' || g, state, token, fingerprint, payload, expires_at \
             FROM {table}, generate_series(1, 9) g"
        ))
        .await;
    let backlog = probe
        .number(&format!("SELECT count(*) FROM {table}"))
        .await;
    // The prototype: the same rows in one partition of a table partitioned by expiry.
    probe
        .exec(
            "CREATE TABLE proto_parts (key text COLLATE \"C\" NOT NULL, state text NOT NULL, \
             token bytea NOT NULL, fingerprint bytea, payload bytea, expires_at timestamptz NOT NULL) \
             PARTITION BY RANGE (expires_at)",
        )
        .await;
    probe
        .exec(
            "CREATE TABLE proto_old PARTITION OF proto_parts FOR VALUES FROM (MINVALUE) TO ('2100-01-01'); \
             ALTER TABLE proto_old SET (autovacuum_enabled = off); \
             CREATE INDEX ON proto_parts (key); CREATE INDEX ON proto_parts (expires_at)",
        )
        .await;
    probe
        .exec(&format!("INSERT INTO proto_parts SELECT * FROM {table}"))
        .await;
    probe.exec("CHECKPOINT").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    println!("\n## The reaper: {backlog} expired records (a tenth written by idem with a 1 s ttl, the rest copied from them in SQL), one caller's first calls on the same table\n");
    let window = Duration::from_secs(4);
    let mark = probe.mark().await;
    let mut quiet = latencies(&writer, &value, window, async || false).await;
    let quiet_cost = probe.cost(&mark, table).await;

    let mark = probe.mark().await;
    let reaping = store_on(server, table, Some(Duration::from_millis(100))).await;
    let reap_filter = "query LIKE 'DELETE FROM%WHERE key IN%'";
    let mut busy = {
        let probe = &mut *probe;
        latencies(
            &writer,
            &value,
            Duration::from_secs(30),
            async || probe.statements(reap_filter).await.rows >= backlog,
        )
        .await
    };
    let busy_cost = probe.cost(&mark, table).await;
    drop(reaping);
    let reaped = probe.statements(reap_filter).await;
    let reaped_cost = reaped;
    // The reaper's time: the window's server CPU less what its calls cost in the quiet window.
    let quiet_per_call = quiet_cost.server_cpu / quiet.len() as f64;
    let reap_cpu = busy_cost.server_cpu - quiet_per_call * busy.len() as f64;
    let quiet_wal = quiet_cost.wal_bytes / quiet.len() as f64;
    let mut retention = Retention {
        reap_exec_us: reaped_cost.exec_ms * 1e3 / reaped_cost.rows,
        reap_cpu_us: reap_cpu * 1e6 / reaped_cost.rows,
        reap_wal: (busy_cost.wal_bytes - quiet_wal * busy.len() as f64) / reaped_cost.rows,
        ..Retention::default()
    };
    println!(
        "| one caller's first calls | calls | p50 µs | p90 µs | p99 µs | mean µs | server cores busy | load before → after |\n|---|---|---|---|---|---|---|---|"
    );
    for (name, values, cost) in [
        ("no reaper (expired rows present)", &mut quiet, &quiet_cost),
        ("while the reaper deletes them", &mut busy, &busy_cost),
    ] {
        let mean = values.iter().sum::<Duration>().as_secs_f64() * 1e6 / values.len() as f64;
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {mean:.0} | {:.2} | {} → {} |",
            values.len(),
            percentile(values, 0.5),
            percentile(values, 0.9),
            percentile(values, 0.99),
            cost.server_cpu / cost.wall.as_secs_f64(),
            cost.load_before,
            cost.load_after,
        );
    }
    let mut ratio = |q: f64| percentile(&mut busy, q) / percentile(&mut quiet, q);
    println!(
        "\nwith the reaper / without: p50 {:.2}×, p99 {:.2}× (load-sensitive). The reaper ran {:.0} statements of at most 1000 rows, {:.0} rows, in {:.2} s of the window of {:.2} s.",
        ratio(0.5),
        ratio(0.99),
        reaped_cost.calls,
        reaped_cost.rows,
        reaped_cost.exec_ms / 1e3,
        busy_cost.wall.as_secs_f64(),
    );

    // What the deleted rows leave: dead tuples, which VACUUM removes.
    let dead = probe
        .number(&format!("SELECT dead_tuple_count::float8 FROM pgstattuple('{table}')"))
        .await;
    let mark = probe.mark().await;
    let notices = server.psql_notices(&format!("VACUUM (VERBOSE) {table}"));
    let vacuum = probe.cost(&mark, table).await;
    retention.vacuum_cpu_us = vacuum.server_cpu * 1e6 / reaped_cost.rows;
    retention.vacuum_wal = vacuum.wal_bytes / reaped_cost.rows;

    println!("\n`VACUUM (VERBOSE) {table}` (psql, its connection's start included in the CPU below):\n\n```");
    for line in notices.lines().filter(|l| {
        ["tuples:", "index scan", "system usage", "WAL usage", "removed", "avg read"]
            .iter()
            .any(|w| l.contains(w))
    }) {
        println!("{}", line.trim());
    }
    println!("```");
    let mark = probe.mark().await;
    probe
        .exec("ALTER TABLE proto_parts DETACH PARTITION proto_old; DROP TABLE proto_old")
        .await;
    let dropped = probe.cost(&mark, "proto").await;
    retention.drop_cpu_us = dropped.server_cpu * 1e6 / backlog;
    retention.drop_wal = dropped.wal_bytes / backlog;

    println!(
        "\n| removing {backlog} expired records | statement time µs/record | server CPU µs/record | WAL B/record | wall |\n|---|---|---|---|---|"
    );
    println!(
        "| reaper `DELETE` batches (idem's reaper, batch 1000) | {:.2} | {:.2} (window CPU less its calls') | {:.0} | {:.2} s |",
        retention.reap_exec_us,
        retention.reap_cpu_us,
        retention.reap_wal,
        reaped_cost.exec_ms / 1e3
    );
    println!(
        "| `VACUUM` after it (pgstattuple saw {dead:.0} dead tuples left; page pruning had removed the others, not their index entries) | | {:.2} | {:.0} | {:.2} s |",
        retention.vacuum_cpu_us,
        retention.vacuum_wal,
        vacuum.wall.as_secs_f64()
    );
    println!(
        "| **row deletes in all** | | **{:.2}** | **{:.0}** | |",
        retention.reap_cpu_us + retention.vacuum_cpu_us,
        retention.reap_wal + retention.vacuum_wal
    );
    println!(
        "| prototype: `DETACH PARTITION` + `DROP TABLE` of a partition holding the same rows | | **{:.3}** | **{:.2}** | {:.3} s |",
        retention.drop_cpu_us,
        retention.drop_wal,
        dropped.wall.as_secs_f64()
    );
    retention
}

/// What partitioning by expiry costs every call: the live-row lookup of a replay on a table
/// of P partitions against idem's table, and whether the key can stay unique.
pub async fn partitions(server: &CapacityServer, probe: &mut Probe) {
    println!("\n## Partitioning by expiry: what every lookup pays (prototype tables, same rows)\n");
    let refused = server
        .try_psql(
            "CREATE TABLE proto_unique (key text PRIMARY KEY, expires_at timestamptz NOT NULL) PARTITION BY RANGE (expires_at)",
        );
    println!("A primary key on `key` alone (what `ON CONFLICT (key)` and one row per key need) on a table partitioned by `expires_at`: {refused}\n");
    let rows = scaled(24_000);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server.url())
        .await
        .expect("a pool");
    println!(
        "| table ({rows} live rows) | lookups | statement time µs/lookup | shared blocks hit/lookup | server CPU µs/lookup |\n|---|---|---|---|---|"
    );
    for parts in [0_u32, 24, 168] {
        let table = format!("proto_live_{parts}");
        if parts == 0 {
            probe.exec(&format!(
                "CREATE TABLE {table} (key text COLLATE \"C\" PRIMARY KEY, state text NOT NULL, token bytea NOT NULL, \
                 fingerprint bytea, payload bytea, expires_at timestamptz NOT NULL); CREATE INDEX ON {table} (expires_at)"
            )).await;
        } else {
            probe.exec(&format!(
                "CREATE TABLE {table} (key text COLLATE \"C\" NOT NULL, state text NOT NULL, token bytea NOT NULL, \
                 fingerprint bytea, payload bytea, expires_at timestamptz NOT NULL) PARTITION BY RANGE (expires_at); \
                 DO $$ BEGIN FOR i IN 0..{last} LOOP \
                   EXECUTE format('CREATE TABLE {table}_%s PARTITION OF {table} FOR VALUES FROM (%L) TO (%L)', i, \
                     date_trunc('hour', now()) + i * interval '1 hour', date_trunc('hour', now()) + (i + 1) * interval '1 hour'); \
                 END LOOP; END $$; CREATE INDEX ON {table} (key); CREATE INDEX ON {table} (expires_at)",
                last = parts - 1
            )).await;
        }
        // Rows spread over the partitions' hours, from an hour ahead on (all live).
        let span = if parts == 0 { 24 } else { parts };
        probe.exec(&format!(
            "INSERT INTO {table} SELECT 'k' || g, 'completed', '\\x00', NULL, convert_to(repeat('x', 150), 'UTF8'), \
             date_trunc('hour', now()) + (1 + g % ({span} - 1)) * interval '1 hour' + interval '1 second' \
             FROM generate_series(1, {rows}) g; ANALYZE {table}"
        )).await;
        let lookup = format!(
            "SELECT state, token, fingerprint, payload, (extract(epoch FROM expires_at - now()) * 1000)::int8 \
             FROM {table} WHERE key = $1 AND expires_at > now()"
        );
        let calls = scaled(3_000);
        let run = async |pool: &sqlx::PgPool, n: u64| {
            for _ in 0..n {
                let key = format!("k{}", 1 + crate::workload::below(rows));
                let found = sqlx::query(sqlx::AssertSqlSafe(lookup.clone()))
                    .bind(key)
                    .fetch_optional(pool)
                    .await
                    .expect("lookup");
                assert!(found.is_some());
            }
        };
        run(&pool, 50).await;
        let mark = probe.mark().await;
        run(&pool, calls).await;
        let cost = probe.cost(&mark, &table).await;
        let name = if parts == 0 {
            "idem's table (primary key on `key`)".to_owned()
        } else {
            format!("{parts} hourly partitions by `expires_at` (index on `key` in each)")
        };
        println!(
            "| {name} | {calls} | {:.1} | {:.1} | {:.1} |",
            cost.matching.exec_ms * 1e3 / cost.matching.calls,
            cost.matching.blocks_hit / cost.matching.calls,
            cost.server_cpu * 1e6 / calls as f64,
        );
    }
    println!("\n(the lookup compares with `now()`, so that expired partitions are pruned at run time; idem's statements use `clock_timestamp()`, which prunes none.)");
}

/// The steady churn's end state: bytes per live record.
pub type Churn = Option<f64>;

/// First calls at a fixed rate, 30 s ttl, the store's reaper every 10 s, the server's
/// autovacuum as configured by default; a sample every 10 s.
pub async fn churn(server: &CapacityServer, probe: &mut Probe) -> Churn {
    let seconds: u64 = std::env::var("IDEM_PG_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    if seconds == 0 {
        return None;
    }
    let rate = scaled(1_000);
    let table = "bench_churn";
    let reap_every = Duration::from_secs(10);
    let store = store_on(server, table, Some(reap_every)).await;
    let value = Arc::new(result_of(64));
    println!(
        "\n## Steady churn: {rate} first calls/s for {seconds} s, ttl 30 s, reaper every 10 s (batch 1000), autovacuum at the server's defaults (naptime {}, scale factor {})\n",
        server.psql("SHOW autovacuum_naptime"),
        server.psql("SHOW autovacuum_vacuum_scale_factor"),
    );
    println!(
        "| at | live records | rows in the table | dead tuples (pgstattuple) | n_dead_tup | autovacuums | heap MB | indexes MB | bytes per live record | calls in window | p50 / p99 µs | server cores busy | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let in_flight = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut skipped = 0_u64;
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = (rate / 100).max(1);
    let mut next_sample = Duration::from_secs(10);
    let mut cpu_at = crate::pg_probe::server_cpu(server.postmaster());
    let mut sampled_at = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        for _ in 0..per_tick {
            if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= 256 {
                skipped += 1;
                continue;
            }
            in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (store, value, latencies, in_flight) = (
                store.clone(),
                value.clone(),
                latencies.clone(),
                in_flight.clone(),
            );
            tokio::spawn(async move {
                let at = Instant::now();
                first_call(&store, Duration::from_secs(30), &value).await;
                latencies.lock().unwrap().push(at.elapsed());
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
        if start.elapsed() >= next_sample {
            next_sample += Duration::from_secs(10);
            let live = probe
                .number(&format!(
                    "SELECT count(*) FROM {table} WHERE expires_at > now()"
                ))
                .await;
            let tuples = probe
                .number(&format!(
                    "SELECT tuple_count::float8 FROM pgstattuple('{table}')"
                ))
                .await;
            let dead = probe
                .number(&format!(
                    "SELECT dead_tuple_count::float8 FROM pgstattuple('{table}')"
                ))
                .await;
            let stats = |column: &str| {
                format!("SELECT {column}::float8 FROM pg_stat_user_tables WHERE relname = '{table}'")
            };
            let n_dead = probe.number(&stats("n_dead_tup")).await;
            let autovacuums = probe.number(&stats("autovacuum_count")).await;
            let [heap, _, indexes, total] = sizes(probe, table).await;
            let mut window = std::mem::take(&mut *latencies.lock().unwrap());
            let cpu = crate::pg_probe::server_cpu(server.postmaster());
            let busy = (cpu - cpu_at) / sampled_at.elapsed().as_secs_f64();
            cpu_at = cpu;
            sampled_at = Instant::now();
            let (p50, p99) = if window.is_empty() {
                (0.0, 0.0)
            } else {
                (percentile(&mut window, 0.5), percentile(&mut window, 0.99))
            };
            println!(
                "| {:.0} s | {live:.0} | {tuples:.0} | {dead:.0} | {n_dead:.0} | {autovacuums:.0} | {:.1} | {:.1} | {:.0} | {} | {p50:.0} / {p99:.0} | {busy:.2} | {} |",
                start.elapsed().as_secs_f64(),
                heap / 1e6,
                indexes / 1e6,
                total / live.max(1.0),
                window.len(),
                load(),
            );
            last = Some(total / live.max(1.0));
        }
    }
    // The calls still running end within their statement timeouts.
    let drained = Instant::now();
    while in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0
        && drained.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if skipped > 0 {
        println!("\n{skipped} calls skipped: 256 were in flight (the rate was not held).");
    }
    let log = server.log();
    let vacuums: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("automatic vacuum of table") && l.contains(table))
        .collect();
    println!("\nautovacuum of {table} during the run (server log, log_autovacuum_min_duration=0): {} runs", vacuums.len());
    let mut lines = log.lines().peekable();
    while let Some(line) = lines.next() {
        if line.contains("automatic vacuum of table") && line.contains(table) {
            println!("\n```\n{}", line.split_once("LOG:").map_or(line, |(_, l)| l).trim());
            while let Some(next) = lines.peek() {
                if next.starts_with('\t') || next.starts_with(' ') {
                    println!("{}", next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            println!("```");
        }
    }
    last
}
