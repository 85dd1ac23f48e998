//! What records weigh on PostgreSQL: bytes per record by result size, as written and
//! compacted, and the sizing table (calls/s × retention) computed from the measured figures.

use std::sync::Arc;

use crate::pg_capacity::{
    CALLERS, COST_HEADER, PerCall, cost_row, first_call, phase, result_of, scaled,
};
use crate::pg_probe::{CapacityServer, Probe};
use crate::pg_retention::{Churn, Retention, store_on};

/// The bytes of a table: heap, TOAST (with its index), indexes, all.
pub async fn sizes(probe: &mut Probe, table: &str) -> [f64; 4] {
    let of = |what: &str| format!("SELECT ({what})::float8");
    [
        probe.number(&of(&format!("pg_relation_size('{table}')"))).await,
        probe
            .number(&of(&format!(
                "coalesce((SELECT pg_total_relation_size(reltoastrelid) FROM pg_class WHERE oid = '{table}'::regclass AND reltoastrelid <> 0), 0)"
            )))
            .await,
        probe.number(&of(&format!("pg_indexes_size('{table}')"))).await,
        probe
            .number(&of(&format!("pg_total_relation_size('{table}')")))
            .await,
    ]
}

/// Bytes per record, as written and compacted, by result size.
pub struct Bytes {
    /// (result bytes, total bytes per record compacted, as written).
    pub rows: Vec<(usize, f64, f64)>,
}

/// Writes completed records of 64 B, 1 KB and 16 KB results into a table each (64 callers),
/// with the WAL and server CPU of these first calls, then the table's bytes per record as
/// written (each first call leaves its claim's row version behind) and after `VACUUM FULL`.
pub async fn bytes(server: &CapacityServer, probe: &mut Probe) -> Bytes {
    println!("\n## First calls and bytes per record by result size (64 callers)\n");
    println!("{COST_HEADER}");
    let mut written = Vec::new();
    for (size, calls) in [(64, 20_000), (1_024, 10_000), (16_384, 2_000)] {
        let table = format!("bench_bytes_{size}");
        let store = store_on(server, &table, None).await;
        let value = Arc::new(result_of(size));
        let op = {
            let (store, value) = (store.clone(), value.clone());
            move || {
                let (store, value) = (store.clone(), value.clone());
                async move { first_call(&store, crate::pg_capacity::TTL, &value).await }
            }
        };
        let (done, cost) = phase(probe, CALLERS, scaled(calls), &table, op).await;
        let records = probe
            .number(&format!("SELECT count(*) FROM {table}"))
            .await;
        println!(
            "{}",
            cost_row(
                &format!("first call, {size} B result"),
                CALLERS,
                done,
                &cost
            )
        );
        written.push((size, table, records));
    }
    println!(
        "\n| result (JSON) | records | as written: heap / TOAST / indexes / total per record | after VACUUM FULL: heap / TOAST / indexes / total per record | row data (pg_column_size) |\n|---|---|---|---|---|"
    );
    let mut out = Bytes { rows: Vec::new() };
    for (size, table, records) in written {
        let per = |b: [f64; 4]| b.map(|v| v / records);
        let raw = per(sizes(probe, &table).await);
        probe.exec(&format!("VACUUM FULL {table}")).await;
        let compact = per(sizes(probe, &table).await);
        let row = probe
            .number(&format!("SELECT avg(pg_column_size(t.*))::float8 FROM {table} t"))
            .await;
        let show = |b: [f64; 4]| format!("{:.0} / {:.0} / {:.0} / **{:.0} B**", b[0], b[1], b[2], b[3]);
        println!(
            "| {size} B | {records} | {} | {} | {row:.0} B |",
            show(raw),
            show(compact)
        );
        out.rows.push((size, compact[3], raw[3]));
    }
    out
}

/// The sizing table: calls/s × retention → records, table size, server cores, WAL.
pub fn sizing(per_call: &PerCall, bytes: &Bytes, retention: &Retention, churn: Churn) {
    let written = |size: usize| {
        bytes
            .rows
            .iter()
            .find(|(s, _, _)| *s == size)
            .map_or(0.0, |(_, _, raw)| *raw)
    };
    // A long retention holds each record for hours against a minute of dead versions: the
    // bytes as written (claim versions and their index entries not yet vacuumed) bound it.
    // The churn's short ttl does not (see its table).
    let (small, large) = (written(64), written(1_024));
    let churned = churn.map_or(String::new(), |c| {
        format!(" (the 30 s churn held {c:.0} B per live record: dead versions of a minute against 30 s of records)")
    });
    let cpu = per_call.first_cpu_us + retention.reap_cpu_us + retention.vacuum_cpu_us;
    let wal = per_call.first_wal + retention.reap_wal + retention.vacuum_wal;
    let wal_checkpoint = per_call.first_wal_checkpoint + retention.reap_wal + retention.vacuum_wal;
    let wal_compressed = per_call.first_wal_compressed + retention.reap_wal + retention.vacuum_wal;
    println!(
        "\n## Sizing, from the figures above\n\nEvery call a first call with a new key (replays add {:.0} µs of server CPU each, no bytes). Bytes per record: as written, {small:.0} B with a 64 B result, {large:.0} B with a 1 KB result{churned}. Server CPU per call: first call {:.0} µs at 64 callers + reaper {:.1} µs + VACUUM {:.1} µs = {cpu:.0} µs. WAL per call: {:.0} + {:.0} + {:.0} = {wal:.0} B without full-page images, {wal_checkpoint:.0} B with the first call's WAL on a large table just after a checkpoint ({:.0} B), {wal_compressed:.0} B so with wal_compression ({:.0} B).\n",
        per_call.replay_cpu_us,
        per_call.first_cpu_us,
        retention.reap_cpu_us,
        retention.vacuum_cpu_us,
        per_call.first_wal,
        retention.reap_wal,
        retention.vacuum_wal,
        per_call.first_wal_checkpoint,
        per_call.first_wal_compressed,
    );
    println!(
        "| calls/s | retention | records held | table + indexes, 64 B result | with 1 KB result | server cores (this machine's) | WAL per hour, no page images | WAL per hour, every call's pages new since the checkpoint (worst case) | the same, wal_compression |\n|---|---|---|---|---|---|---|---|---|"
    );
    for rate in [1_000.0, 10_000.0, 100_000.0_f64] {
        for (name, seconds) in [("1 h", 3_600.0), ("24 h", 86_400.0), ("7 d", 604_800.0_f64)] {
            let records = rate * seconds;
            let gib = |b: f64| records * b / (1u64 << 30) as f64;
            println!(
                "| {rate:.0} | {name} | {} | {} | {} | {:.2} | {:.1} GiB | {:.1} GiB | {:.1} GiB |",
                human(records),
                size(gib(small)),
                size(gib(large)),
                rate * cpu / 1e6,
                rate * wal * 3_600.0 / (1u64 << 30) as f64,
                rate * wal_checkpoint * 3_600.0 / (1u64 << 30) as f64,
                rate * wal_compressed * 3_600.0 / (1u64 << 30) as f64,
            );
        }
    }
}

fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2} billion", n / 1e9)
    } else {
        format!("{:.1} million", n / 1e6)
    }
}

fn size(gib: f64) -> String {
    if gib >= 1024.0 {
        format!("{:.1} TiB", gib / 1024.0)
    } else {
        format!("{gib:.1} GiB")
    }
}
