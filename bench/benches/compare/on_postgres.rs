//! The PostgreSQL rows: idem on `PostgresStore` against raw prepared statements on the same
//! pool, with one caller and with 64 (`on_sql.rs`'s rows), and the bytes a record takes in the
//! table.

use idem::{Config, Idem, PostgresOptions, PostgresStore};

use crate::measure::Plan;
use crate::postgres_server::PostgresServer;
use crate::report::{Quantity, Report};
use crate::workload::charge;

/// Records written for the bytes row.
const RECORDS: u64 = 10_000;

/// One caller, then 64 (the rows every SQL store has, `on_sql.rs`) on a `PostgresStore` and its
/// own pool, then bytes per record.
pub async fn rows(report: &mut Report, plan: &Plan, server: &PostgresServer) {
    let options = PostgresOptions::default().reaper_interval(None);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the benchmark's PostgreSQL");
    let pool = store.pool().clone();
    let idem = Idem::with_settings(store, &Config::default());
    crate::on_sql::rows(report, plan, "PostgreSQL", idem, pool).await;
    bytes(report, server).await;
}

/// The bytes of table and indexes per completed record, in a table of their own, compacted.
async fn bytes(report: &mut Report, server: &PostgresServer) {
    report.section("PostgreSQL, bytes per stored record");
    let options = PostgresOptions::default()
        .table("bench_bytes")
        .reaper_interval(None);
    let store = PostgresStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the benchmark's PostgreSQL");
    let idem = Idem::with_settings(store, &Config::default());
    for order in 0..RECORDS {
        idem.scope(charge(order)).await.unwrap();
    }
    // Each first call leaves an old row version behind (the claim): rewrite the table
    // compactly, as autovacuum eventually makes it.
    server.psql("VACUUM FULL bench_bytes");
    let total: f64 = server
        .psql("SELECT pg_total_relation_size('bench_bytes')")
        .parse()
        .expect("a size");
    let row: f64 = server
        .psql("SELECT avg(pg_column_size(t.*)) FROM bench_bytes t")
        .parse()
        .expect("a size");
    report.add(
        "table + indexes per record (64-byte result, short key)",
        (Quantity::Bytes(total / RECORDS as f64), None),
        None,
        None,
    );
    report.add(
        "row data per record",
        (Quantity::Bytes(row), None),
        None,
        None,
    );
}
