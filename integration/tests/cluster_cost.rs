//! What a call costs the servers of a Redis Cluster, measured on one started by the test: the
//! commands per operation (`INFO commandstats`), the CPU they take (`usec_per_call`, and the
//! whole process from `INFO cpu`), the bytes on the wire (`INFO stats`) and the memory of a
//! completed record (`MEMORY USAGE`, and `used_memory` over many records). The figures of
//! docs/SCALING.md come from this test, run alone with more calls:
//!
//! ```text
//! IDEM_COST_CALLS=50000 cargo test -p idem-integration --release --test cluster_cost -- --nocapture
//! ```
//!
//! The test asserts what must hold whatever the machine: each operation sends exactly its
//! commands, nothing else reaches the servers, and a record stays within a few hundred bytes.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem::store::{Claim, Record};
use idem::{Call, Config, Fingerprint, RedisStore, Store};
use serde::{Deserialize, Serialize};

use support::cluster::{Node, RedisCluster};

const SCOPE: &str = "billing::charge";
/// `SCOPE` as it stands in store keys (`::` is written `.`).
const STORED_SCOPE: &str = "billing.charge";
/// Calls in flight at once.
const CONCURRENCY: usize = 32;

/// The result of a typical idempotent call: a payment receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    order_id: String,
    cents: u64,
    currency: String,
    status: String,
    created_at: u64,
}

/// What the masters did between two readings.
#[derive(Default)]
struct Usage {
    /// Command → (calls, usec), summed over the masters.
    commands: BTreeMap<String, (u64, u64)>,
    cpu_seconds: f64,
    bytes_in: u64,
    bytes_out: u64,
    wall: Duration,
}

struct Reading {
    cpu: Vec<f64>,
    bytes_in: Vec<u64>,
    bytes_out: Vec<u64>,
    at: Instant,
}

fn read(masters: &[&Node]) -> Reading {
    let number = |node: &Node, section: &str, field: &str| -> f64 {
        node.info_field(section, field).parse().expect("a number")
    };
    Reading {
        cpu: masters
            .iter()
            .map(|n| number(n, "cpu", "used_cpu_user") + number(n, "cpu", "used_cpu_sys"))
            .collect(),
        bytes_in: masters
            .iter()
            .map(|n| number(n, "stats", "total_net_input_bytes") as u64)
            .collect(),
        bytes_out: masters
            .iter()
            .map(|n| number(n, "stats", "total_net_output_bytes") as u64)
            .collect(),
        at: Instant::now(),
    }
}

/// Resets the masters' command statistics, runs `phase`, and reports what the masters did.
async fn measure<F: std::future::Future<Output = ()>>(masters: &[&Node], phase: F) -> Usage {
    for master in masters {
        let _: () = master.cmd(&["CONFIG", "RESETSTAT"]);
    }
    let before = read(masters);
    phase.await;
    let after = read(masters);
    let mut commands = BTreeMap::new();
    for master in masters {
        for (name, (calls, usec)) in master.command_stats() {
            let entry: &mut (u64, u64) = commands.entry(name).or_default();
            entry.0 += calls;
            entry.1 += usec;
        }
    }
    // The harness's own readings are not the store's.
    for admin in ["info", "config|resetstat", "ping"] {
        commands.remove(admin);
    }
    let sum = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(x, y)| y - x).sum::<u64>();
    Usage {
        commands,
        cpu_seconds: before.cpu.iter().zip(&after.cpu).map(|(x, y)| y - x).sum(),
        bytes_in: sum(&before.bytes_in, &after.bytes_in),
        bytes_out: sum(&before.bytes_out, &after.bytes_out),
        wall: after.at - before.at,
    }
}

/// Runs `op(i)` for `i` in `0..n`, `CONCURRENCY` at a time.
async fn run_all<F, Fut>(n: usize, op: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    op(i).await;
                    i += CONCURRENCY;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
}

fn report(name: &str, n: usize, usage: &Usage) {
    let per = |x: f64| x / n as f64;
    eprintln!(
        "{name}: {n} ops in {:?} ({:.0} ops/s)",
        usage.wall,
        n as f64 / usage.wall.as_secs_f64()
    );
    for (command, (calls, usec)) in &usage.commands {
        eprintln!(
            "  cmdstat {command}: {:.3} calls/op, {:.3} usec/call, {:.3} usec/op",
            per(*calls as f64),
            *usec as f64 / *calls as f64,
            per(*usec as f64)
        );
    }
    eprintln!(
        "  process CPU {:.2} usec/op; wire {:.1} B in + {:.1} B out per op",
        per(usage.cpu_seconds * 1e6),
        per(usage.bytes_in as f64),
        per(usage.bytes_out as f64)
    );
}

fn calls_of(usage: &Usage, command: &str) -> u64 {
    usage.commands.get(command).map_or(0, |(calls, _)| *calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_cost_of_a_call_on_a_cluster() {
    let n: usize = std::env::var("IDEM_COST_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000);
    let cluster = RedisCluster::start(3, 0);
    let store = RedisStore::connect(&Config::default().store(cluster.url()).pool_size(4))
        .await
        .unwrap();
    let masters = cluster.masters();

    // A real record: a receipt with a fingerprint, stored by the engine.
    let receipt = |i: usize| Receipt {
        charge_id: format!("ch_3Pq{:017x}", i as u64 * 7_919),
        order_id: format!("order-{i:08}"),
        cents: 4_999,
        currency: "EUR".into(),
        status: "succeeded".into(),
        created_at: 1_767_225_600 + i as u64,
    };
    let sample = receipt(0);
    Call::new(SCOPE, "order-00000000")
        .fingerprint(&("order-00000000", 4_999, "4242"))
        .store(store.clone())
        .run(async { sample })
        .await
        .unwrap();
    let sample_key = format!("idem:{STORED_SCOPE}:order-00000000");
    let owner = cluster.owner_of_key(&sample_key);
    let payload: Vec<u8> = owner.cmd(&["GET", sample_key.as_str()]);
    let record_usage: u64 = owner.cmd(&["MEMORY", "USAGE", sample_key.as_str()]);
    eprintln!(
        "a record: key {} B, value {} B, MEMORY USAGE {record_usage} B\n  {}",
        sample_key.len(),
        payload.len(),
        String::from_utf8_lossy(&payload)
    );
    assert!(
        (150..400).contains(&payload.len()),
        "an envelope of a receipt is a few hundred bytes: {}",
        payload.len()
    );
    assert!(record_usage < 512, "MEMORY USAGE {record_usage}");

    let keys: Arc<Vec<String>> = Arc::new(
        (1..=n)
            .map(|i| format!("idem:{STORED_SCOPE}:order-{i:08}"))
            .collect(),
    );
    let claims: Arc<Vec<Claim>> = Arc::new(
        (0..n)
            .map(|i| Claim::new(Some(Fingerprint::of_bytes(&i.to_le_bytes()))))
            .collect(),
    );
    let used_memory = |masters: &[&Node]| -> u64 {
        masters
            .iter()
            .map(|m| {
                m.info_field("memory", "used_memory")
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    // Fill the pool (each of its connections is a Cluster connection to every master), so
    // that making connections is not counted below.
    run_all(CONCURRENCY * 8, {
        let store = store.clone();
        move |_| {
            let store = store.clone();
            async move {
                Call::new(SCOPE, "order-00000000")
                    .store(store)
                    .run(async { receipt(0) })
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let memory_before = used_memory(&masters);

    // A first call is a claim, then a completion.
    let claimed = measure(&masters, {
        let (store, keys, claims) = (store.clone(), keys.clone(), claims.clone());
        run_all(n, move |i| {
            let (store, keys, claims) = (store.clone(), keys.clone(), claims.clone());
            async move {
                let found = store
                    .claim(&keys[i], &claims[i], Duration::from_secs(30))
                    .await
                    .unwrap();
                assert_eq!(found, None);
            }
        })
    })
    .await;
    let payload = Arc::new(payload);
    let completed = measure(&masters, {
        let (store, keys, claims) = (store.clone(), keys.clone(), claims.clone());
        run_all(n, move |i| {
            let (store, keys, claims, payload) =
                (store.clone(), keys.clone(), claims.clone(), payload.clone());
            async move {
                let fence = store
                    .complete(&keys[i], &claims[i], &payload, Duration::from_secs(86_400))
                    .await
                    .unwrap();
                assert_eq!(fence, idem::store::Fence::Held);
            }
        })
    })
    .await;
    let memory_after = used_memory(&masters);
    // A replay is a claim that finds the completed record.
    let replayed = measure(&masters, {
        let (store, keys) = (store.clone(), keys.clone());
        run_all(n, move |i| {
            let (store, keys) = (store.clone(), keys.clone());
            async move {
                let found = store
                    .claim(&keys[i], &Claim::new(None), Duration::from_secs(30))
                    .await
                    .unwrap();
                assert!(matches!(found, Some(Record::Completed { .. })));
            }
        })
    })
    .await;

    report("claim (SET NX PX GET, key absent)", n, &claimed);
    report("complete (EVALSHA: GET, SET PX, SPUBLISH)", n, &completed);
    report("replay (SET NX PX GET, record found)", n, &replayed);
    let per_record = (memory_after - memory_before) as f64 / n as f64;
    eprintln!(
        "memory: {per_record:.1} B per completed record (used_memory over {n} records), {:.2} M records per GiB",
        (1u64 << 30) as f64 / per_record / 1e6
    );

    let n = n as u64;
    assert_eq!(
        claimed.commands,
        BTreeMap::from([("set".to_owned(), (n, claimed.commands["set"].1))]),
        "a claim is one SET and nothing else"
    );
    assert_eq!(
        calls_of(&completed, "evalsha"),
        n,
        "a completion is one EVALSHA"
    );
    for inner in ["get", "set", "spublish"] {
        assert_eq!(
            calls_of(&completed, inner),
            n,
            "a completion runs one {inner} inside its script"
        );
    }
    assert_eq!(
        completed.commands.len(),
        4,
        "nothing else ran: {:?}",
        completed.commands
    );
    assert_eq!(
        replayed.commands.keys().collect::<Vec<_>>(),
        ["set"],
        "a replay is one SET and nothing else"
    );
    assert_eq!(calls_of(&replayed, "set"), n);
    for (name, usage) in [
        ("claim", &claimed),
        ("complete", &completed),
        ("replay", &replayed),
    ] {
        let bytes = (usage.bytes_in + usage.bytes_out) / n;
        assert!(bytes < 1_024, "{name}: {bytes} B on the wire per operation");
    }
    assert!(
        per_record < 1_024.0,
        "{per_record} B of server memory per record"
    );
}
