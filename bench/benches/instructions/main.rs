//! Client instructions per call, counted by callgrind: the client's own work, in a number that
//! does not move with the load of the machine.
//!
//! ```sh
//! cargo bench --manifest-path bench/Cargo.toml --bench instructions
//! cargo bench --manifest-path bench/Cargo.toml --bench instructions -- --calls 5000
//! ```
//!
//! It starts a `redis-server` of its own on a free loopback port (outside valgrind: only the
//! client is counted), then runs itself once per operation under
//! `valgrind --tool=callgrind`, collecting only inside `count::counted_calls`: a number of
//! calls of the operation, after a warm-up outside it. It prints the instructions per call,
//! each beside its baseline and the target. See BENCHMARKS.md for what each row means.

mod count;

#[path = "../compare/by_hand.rs"]
mod by_hand;
#[allow(dead_code)]
#[path = "../../../integration/tests/support/redis.rs"]
mod redis_server;
#[allow(dead_code)]
#[path = "../compare/workload.rs"]
mod workload;

use std::path::Path;
use std::process::Command;

use crate::count::Operation;

/// Calls counted per operation, unless `--calls` says otherwise.
const CALLS: u64 = 2_000;

/// The function callgrind collects in, as callgrind names it.
const COUNTED: &str = "*count::counted_calls*";

/// The caches simulated for the rows at scale: this machine's L1 data cache and its per-core
/// L2. Beyond the L2, a dependent load costs this VM about 250 ns (see BENCHMARKS.md).
const CACHES: [&str; 3] = ["--I1=32768,8,64", "--D1=49152,12,64", "--LL=2097152,16,64"];

/// What callgrind counted, per call.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    instructions: f64,
    /// Data reads and writes that missed the simulated L1 (only with the cache simulation).
    d1_misses: f64,
    /// Data reads and writes that missed the simulated last level (the L2 here).
    ll_misses: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        count::child(&args[at + 1..]);
        return;
    }
    let calls = args
        .iter()
        .position(|a| a == "--calls")
        .map_or(CALLS, |at| {
            args.get(at + 1)
                .and_then(|n| n.parse().ok())
                .expect("--calls takes a number")
        });
    let valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .expect("valgrind was not found on PATH; install it with `sudo apt-get install valgrind`");
    let version = String::from_utf8_lossy(&valgrind.stdout).trim().to_owned();

    let server = redis_server::RedisServer::start();
    let dir = std::env::temp_dir().join(format!("idem-instructions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory for callgrind's output");
    let counted: Vec<(Operation, Counts)> = Operation::ALL
        .into_iter()
        .map(|op| (op, per_call(op, calls, &server.url(), &dir, false)))
        .chain(
            Operation::AT_SCALE
                .into_iter()
                .map(|op| (op, per_call(op, calls, &server.url(), &dir, true))),
        )
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    drop(server);

    let of = |op: Operation| {
        counted
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, n)| *n)
            .expect("every operation is counted")
    };
    println!(
        "{version}, --tool=callgrind; {calls} calls of each operation after a warm-up; client thread only"
    );
    println!();
    println!("{}", table(&|op| of(op).instructions));
    println!();
    println!(
        "At scale: a replay of a random one of N live records; caches simulated: {}",
        CACHES.join(" ")
    );
    println!();
    println!("{}", scale_table(&of));
}

/// Runs the child for `op` under callgrind (simulating the caches if `caches`) and returns
/// what it counted per call.
fn per_call(op: Operation, calls: u64, url: &str, dir: &Path, caches: bool) -> Counts {
    let out = dir.join(format!("{}.callgrind", op.name()));
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let mut valgrind = Command::new("valgrind");
    valgrind
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect={COUNTED}"))
        .arg(format!("--callgrind-out-file={}", out.display()));
    if caches {
        valgrind.arg("--cache-sim=yes").args(CACHES);
    }
    let run = valgrind
        .arg(exe)
        .arg("--child")
        .arg(op.name())
        .arg(calls.to_string())
        .arg(url)
        .output()
        .expect("run valgrind");
    assert!(
        run.status.success(),
        "{} under callgrind failed:\n{}",
        op.name(),
        String::from_utf8_lossy(&run.stderr)
    );
    let report = std::fs::read_to_string(&out).expect("callgrind's output file");
    let field = |prefix: &str| {
        report
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    let (Some(events), Some(totals)) = (
        field("events:"),
        field("totals:").or_else(|| field("summary:")),
    ) else {
        panic!(
            "callgrind's output of {} has no totals (a full disk?):\n{}",
            op.name(),
            String::from_utf8_lossy(&run.stderr)
        );
    };
    let total = |event: &str| {
        events
            .iter()
            .position(|e| *e == event)
            .and_then(|at| totals.get(at)?.parse::<u64>().ok())
            .map_or(0.0, |n| n as f64 / calls as f64)
    };
    let counts = Counts {
        instructions: total("Ir"),
        d1_misses: total("D1mr") + total("D1mw"),
        ll_misses: total("DLmr") + total("DLmw"),
    };
    assert!(
        counts.instructions > 0.0,
        "callgrind counted nothing in {COUNTED} for {}",
        op.name()
    );
    counts
}

/// The rows at scale: instructions and cache misses per call with 1k, 100k and 1M records,
/// the memory store beside a bare `HashMap`.
fn scale_table(of: &impl Fn(Operation) -> Counts) -> String {
    let mut lines = vec![
        "| live records | memory store: instructions | L1 misses | L2 misses | L2 misses over 1k's | bare `HashMap` lookup + decode: instructions | L1 misses | L2 misses |".to_owned(),
        "|---|---:|---:|---:|---:|---:|---:|---:|".to_owned(),
    ];
    let first = of(Operation::MemoryReplayAmong(1_000));
    for (store, map, label) in [
        (
            Operation::MemoryReplayAmong(1_000),
            Operation::MapLookupAmong(1_000),
            "1k",
        ),
        (
            Operation::MemoryReplayAmong(100_000),
            Operation::MapLookupAmong(100_000),
            "100k",
        ),
        (
            Operation::MemoryReplayAmong(1_000_000),
            Operation::MapLookupAmong(1_000_000),
            "1M",
        ),
    ] {
        let (s, m) = (of(store), of(map));
        lines.push(format!(
            "| {label} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.2} |",
            s.instructions,
            s.d1_misses,
            s.ll_misses,
            if label == "1k" {
                String::new()
            } else {
                format!("+{:.2}", s.ll_misses - first.ll_misses)
            },
            m.instructions,
            m.d1_misses,
            m.ll_misses,
        ));
    }
    lines.join("\n")
}

/// How a row compares with its baseline, and what it must reach.
enum Versus {
    /// subject / baseline, at most `Some(x)`.
    Ratio(Option<f64>),
    /// subject − baseline.
    Difference,
}

/// The table of instructions per call.
fn table(of: &impl Fn(Operation) -> f64) -> String {
    use Operation::*;
    let rows: [(&str, Operation, &str, Operation, Versus); 17] = [
        (
            "Redis replay",
            RedisReplay,
            "floor replay",
            FloorReplay,
            Versus::Ratio(Some(1.10)),
        ),
        (
            "Redis first call",
            RedisFirst,
            "floor first call",
            FloorFirst,
            Versus::Ratio(Some(1.10)),
        ),
        (
            "Redis replay",
            RedisReplay,
            "floor replay + the value decoded",
            FloorReplayDecoded,
            Versus::Ratio(Some(1.10)),
        ),
        (
            "Redis first call",
            RedisFirst,
            "floor first call + the value encoded",
            FloorFirstEncoded,
            Versus::Ratio(Some(1.10)),
        ),
        (
            "Redis replay",
            RedisReplay,
            "raw GET",
            RawGet,
            Versus::Ratio(None),
        ),
        (
            "Redis replay on a deadpool-redis pool (`from_deadpool`)",
            DeadpoolReplay,
            "Redis replay",
            RedisReplay,
            Versus::Ratio(None),
        ),
        (
            "Redis first call on a deadpool-redis pool (`from_deadpool`)",
            DeadpoolFirst,
            "Redis first call",
            RedisFirst,
            Versus::Ratio(None),
        ),
        (
            "floor replay: SET NX PX GET by hand",
            FloorReplay,
            "raw GET",
            RawGet,
            Versus::Ratio(None),
        ),
        (
            "floor first call: SET NX PX GET + EVALSHA by hand",
            FloorFirst,
            "raw GET",
            RawGet,
            Versus::Ratio(None),
        ),
        (
            "floor replay + the value decoded",
            FloorReplayDecoded,
            "floor replay",
            FloorReplay,
            Versus::Difference,
        ),
        (
            "floor first call + the value encoded",
            FloorFirstEncoded,
            "floor first call",
            FloorFirst,
            Versus::Difference,
        ),
        (
            "memory store replay, 1k live records",
            MemoryReplayAmong(1_000),
            "bare `HashMap` lookup + decode, 1k",
            MapLookupAmong(1_000),
            Versus::Ratio(Some(1.3)),
        ),
        (
            "local-cache replay (memory store behind)",
            LocalCacheReplay,
            "bare `HashMap` lookup + decode, 1k",
            MapLookupAmong(1_000),
            Versus::Ratio(Some(1.1)),
        ),
        (
            "memory store replay, 1M live records",
            MemoryReplayAmong(1_000_000),
            "bare `HashMap` lookup + decode, 1M",
            MapLookupAmong(1_000_000),
            Versus::Ratio(Some(1.3)),
        ),
        (
            "memory store replay",
            MemoryReplay,
            "direct call",
            Direct,
            Versus::Difference,
        ),
        (
            "local-cache replay (memory store behind)",
            LocalCacheReplay,
            "direct call",
            Direct,
            Versus::Difference,
        ),
        ("direct call", Direct, "", Direct, Versus::Difference),
    ];
    let mut lines = vec![
        "| operation | instructions per call | baseline | measured | target | met |".to_owned(),
        "|---|---:|---|---:|---|---|".to_owned(),
    ];
    for (name, op, base_name, base, versus) in rows {
        let (n, b) = (of(op), of(base));
        let line = if op == base {
            format!("| {name} | {n:.0} | | | | |")
        } else {
            match versus {
                Versus::Ratio(target) => {
                    let ratio = n / b;
                    let (target, met) = match target {
                        Some(t) => (format!("≤ {t}×"), if ratio <= t { "yes" } else { "**no**" }),
                        None => (String::new(), ""),
                    };
                    format!(
                        "| {name} | {n:.0} | {b:.0} {base_name} | {ratio:.2}× | {target} | {met} |"
                    )
                }
                Versus::Difference => {
                    format!(
                        "| {name} | {n:.0} | {b:.0} {base_name} | {:+.0} | | |",
                        n - b
                    )
                }
            }
        };
        lines.push(line);
    }
    lines.join("\n")
}
