//! The bytes per record of the memory store and of the local cache, measured in a process of
//! their own (this benchmark started with `--memory-child`) that counts every allocation from
//! its start.

use std::process::Command;

use idem::{Config, Idem, MemoryStore};

use crate::alloc;
use crate::memory::roomy_store;
use crate::report::{Quantity, Report};
use crate::workload::charge;

/// Records stored to measure.
const RECORDS: u64 = 100_000;

/// The child's work: prints the live bytes per record of a memory store, and of a memory
/// store with a local cache.
pub fn run() {
    alloc::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Lazily made statics (metrics, tracing call sites) are made before counting.
        let warm = Idem::with_settings(MemoryStore::new(), &Config::default().local_cache(10));
        warm.scope(charge(u64::MAX)).await.unwrap();
        let store = per_record(Idem::with_settings(roomy_store(), &Config::default())).await;
        let both = per_record(Idem::with_settings(
            roomy_store(),
            &Config::default().local_cache(RECORDS as usize),
        ))
        .await;
        println!("{store} {both}");
    });
}

async fn per_record(idem: Idem) -> f64 {
    let before = alloc::live();
    idem.scope(async {
        for order in 0..RECORDS {
            charge(order).await.unwrap();
        }
    })
    .await;
    let grown = alloc::live() - before;
    drop(idem);
    grown as f64 / RECORDS as f64
}

/// Runs the child and reports its numbers.
pub fn rows(report: &mut Report) {
    let output = Command::new(std::env::current_exe().expect("the benchmark's path"))
        .arg("--memory-child")
        .output()
        .expect("run the memory measurement");
    assert!(
        output.status.success(),
        "the memory measurement failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let numbers: Vec<f64> = text
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    let [store, both] = numbers[..] else {
        panic!("unexpected output of the memory measurement: {text}")
    };
    report.add(
        "memory store, heap bytes per record (100k records, 24-byte keys)",
        (Quantity::Bytes(store), None),
        None,
        None,
    );
    report.add(
        "local cache, heap bytes per entry (in addition)",
        (Quantity::Bytes(both - store), None),
        None,
        None,
    );
}
