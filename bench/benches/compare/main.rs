//! The comparison benchmark of idem: one command, one table.
//!
//! ```sh
//! cargo bench --manifest-path bench/Cargo.toml --bench compare            # the table
//! cargo bench --manifest-path bench/Cargo.toml --bench compare -- --json  # JSON instead
//! cargo bench --manifest-path bench/Cargo.toml --bench compare -- --quick # a short check
//! cargo bench --manifest-path bench/Cargo.toml --bench compare -- --only concurrent # one part
//! ```
//!
//! `--only` runs one part (`memory`, `redis`, `concurrent`, `floor`, `waiters`, `scaling`,
//! `bytes`, `postgres`, `sqlite`, `mysql`), for profiling it. `--only pg-capacity` runs the PostgreSQL capacity
//! measurements of docs/SCALING.md (a few minutes; not part of the full run), `--only
//! mysql-shapes` the statement shapes a MySQL claim could take (`mysql_shapes.rs`; not part of
//! the full run either).
//!
//! It starts a `redis-server`, a PostgreSQL and a MariaDB of its own on free loopback ports
//! (and stops them at the end), keeps its SQLite file in a temporary directory,
//! runs every comparison on one current-thread tokio runtime (the client uses one core, the
//! server the other), and prints the medians, the ratios and the targets. See BENCHMARKS.md
//! for what each row means.

mod alloc;
mod child;
mod floor;
mod measure;
mod memory;
mod mysql_shapes;
mod naive;
mod on_postgres;
mod on_redis;
mod on_sql;
mod peers;
mod pg_bouncer;
mod pg_bytes;
mod pg_capacity;
mod pg_probe;
mod pg_retention;
mod report;
mod waiters;
mod workload;

#[allow(dead_code)]
#[path = "../../../integration/tests/support/redis.rs"]
mod redis_server;

#[allow(dead_code)]
#[path = "../../../integration/tests/support/postgres.rs"]
mod postgres_server;

#[allow(dead_code)]
#[path = "../../../integration/tests/support/mariadb.rs"]
mod mariadb_server;

use std::time::Instant;

use idem::{Config, Idem};

use crate::measure::Plan;
use crate::report::Report;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    if flag("--memory-child") {
        child::run();
        return;
    }
    let quick = flag("--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|at| args.get(at + 1).cloned());
    let part = |name: &str| only.as_deref().is_none_or(|only| only == name);
    // Minutes long and with a server of its own: run only when asked for.
    if only.as_deref() == Some("pg-capacity") {
        pg_capacity::run();
        return;
    }
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let started = Instant::now();

    let server = redis_server::RedisServer::start();
    let mut report = Report::default();
    let version: String = server.cmd(&["INFO", "server"]);
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    report.context.push((
        "machine".into(),
        format!(
            "{} cores; client: one current-thread tokio runtime; redis-server {version} on 127.0.0.1:{}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            server.port()
        ),
    ));
    report.context.push((
        "peers".into(),
        "cached 4 (AsyncRedisCache), idempotent 0.3.0 (ValkeyStore; 2.0 needs Rust 1.98)".into(),
    ));
    report.context.push(("load at start".into(), load()));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        if part("memory") {
            memory::one_caller(&mut report, &plan).await;
        }
        let setup = on_redis::Setup::new(&server.url()).await;
        if part("redis") {
            on_redis::one_caller(&mut report, &plan, &setup).await;
        }
        if part("concurrent") {
            on_redis::concurrent(&mut report, &plan, &setup).await;
        }
        if part("floor") {
            floor::rows(&mut report, &plan, &setup.conn).await;
        }
        if part("waiters") {
            let memory = Idem::with_settings(memory::roomy_store(), &Config::default());
            waiters::rows(&mut report, &memory, &setup.idem, quick).await;
        }
        if part("scaling") {
            memory::scaling(&mut report, &plan).await;
            memory::refused(&mut report, &plan).await;
            on_redis::scaling(&mut report, &plan, &setup).await;
        }
        if part("postgres") {
            let server = postgres_server::PostgresServer::quiet();
            let version = server.psql("SHOW server_version");
            report.context.push((
                "postgres".into(),
                format!(
                    "PostgreSQL {version} on 127.0.0.1:{} (fsync=off)",
                    server.port()
                ),
            ));
            on_postgres::rows(&mut report, &plan, &server).await;
        }
        if part("sqlite") {
            on_sql::sqlite(&mut report, &plan).await;
        }
        if part("mysql") {
            on_sql::mysql(&mut report, &plan).await;
        }
        // Not part of the full run: the evidence behind `MySqlStore`'s claim.
        if only.as_deref() == Some("mysql-shapes") {
            mysql_shapes::run(&mut report, &plan).await;
        }
    });
    if part("bytes") {
        child::rows(&mut report);
    }
    report.context.push(("load at end".into(), load()));
    report.context.push((
        "run time".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    drop(server);

    if flag("--json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report as JSON")
        );
    } else {
        println!("{}", report.table());
    }
}

/// The load average and the compilers running now: what else used the machine.
fn load() -> String {
    let average = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    let compilers = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "rustc")
                })
                .count()
        })
        .unwrap_or(0);
    format!("load average {average}, {compilers} rustc running")
}
