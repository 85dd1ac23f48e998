//! The in-process rows: the memory store and the local cache against calling the function
//! directly.

use std::collections::HashMap;
use std::hint::black_box;

use idem::{Config, Idem, MemoryStore};

use crate::measure::{Plan, latency, latency_pair};
use crate::report::{Quantity, Report, Target};
use crate::workload::{Receipt, below, charge, direct, fresh, receipt, store_key};

/// A memory store that never fills up during the run.
pub fn roomy_store() -> MemoryStore {
    MemoryStore::with_capacity(100_000_000)
}

/// Replay and first call on the memory store, and replay from the local cache.
pub async fn one_caller(report: &mut Report, plan: &Plan) {
    report.section("Memory store, one caller (overhead over calling the function)");
    let plain = Idem::with_settings(roomy_store(), &Config::default());
    let cached = Idem::with_settings(roomy_store(), &Config::default().local_cache(100_000));
    plain.scope(charge(7)).await.unwrap();
    cached.scope(charge(7)).await.unwrap();

    let (base, replay) = plain
        .scope(latency_pair(
            plan,
            async || {
                black_box(direct(black_box(7)).await);
            },
            async || {
                black_box(charge(black_box(7)).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "replay, small struct",
        "direct call",
        (base, replay),
        Quantity::Nanos,
        Some(Target::OverheadAtMost(400.0)),
    );

    let (base, first) = plain
        .scope(latency_pair(
            plan,
            async || {
                black_box(direct(black_box(fresh())).await);
            },
            async || {
                black_box(charge(fresh()).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "first call",
        "direct call",
        (base, first),
        Quantity::Nanos,
        None,
    );

    let (base, replay) = cached
        .scope(latency_pair(
            plan,
            async || {
                black_box(direct(black_box(7)).await);
            },
            async || {
                black_box(charge(black_box(7)).await.unwrap());
            },
        ))
        .await;
    report.add_pair(
        "replay from the local cache (L1)",
        "direct call",
        (base, replay),
        Quantity::Nanos,
        Some(Target::OverheadAtMost(250.0)),
    );

    // What any replay of a JSON record pays at least: decoding the receipt.
    let json = serde_json::to_vec(&receipt(7)).unwrap();
    let (base, decode) = latency_pair(
        plan,
        async || {
            black_box(direct(black_box(7)).await);
        },
        async || {
            black_box(serde_json::from_slice::<Receipt>(black_box(&json)).unwrap());
        },
    )
    .await;
    report.add_pair(
        "for scale: decoding the receipt's JSON alone",
        "direct call",
        (base, decode),
        Quantity::Nanos,
        None,
    );
}

/// The cost of a replay of a random live key with 100k and 1M live keys, each sampled in turn
/// with a store of 1k (judged by the paired ratio, so that a change of the machine's load
/// between the two does not count); beside it, the same lookups in bare `HashMap`s (find the
/// key, decode the stored JSON): how much of the growth is the memory hierarchy's, not the
/// store's.
pub async fn scaling(report: &mut Report, plan: &Plan) {
    report.section("Memory store, scaling: replay of a random live key");
    const SMALL: u64 = 1_000;
    let (small, small_map) = filled(SMALL).await;
    // 1M's growth over 1k is the machine's caches more than the store's (the bare map grows
    // more): its target is the row against the bare map at 1M below, the same DRAM misses.
    for (live, label, target) in [(100_000, "100k", Some(1.5)), (1_000_000, "1M", None)] {
        let (large, large_map) = filled(live).await;
        let (base, cost) = latency_pair(
            plan,
            async || {
                black_box(small.scope(charge(below(SMALL))).await.unwrap());
            },
            async || {
                black_box(large.scope(charge(below(live))).await.unwrap());
            },
        )
        .await;
        let (base_map, map) = latency_pair(
            plan,
            async || lookup(&small_map, SMALL),
            async || lookup(&large_map, live),
        )
        .await;
        report.add_pair(
            &format!("{label} live keys"),
            "with 1k keys",
            (base, cost),
            Quantity::Nanos,
            target.map(Target::RatioAtMost),
        );
        report.add_pair(
            &format!("{label} live keys, bare HashMap lookup + decode"),
            "with 1k keys",
            (base_map, map),
            Quantity::Nanos,
            None,
        );
        if live == 1_000_000 {
            let pair = latency_pair(
                plan,
                async || lookup(&large_map, live),
                async || {
                    black_box(large.scope(charge(below(live))).await.unwrap());
                },
            )
            .await;
            report.add_pair(
                "1M live keys",
                "bare HashMap lookup + decode, 1M",
                pair,
                Quantity::Nanos,
                Some(Target::RatioAtMost(1.3)),
            );
        }
    }
}

/// An idem on a memory store holding the records of orders `0..live`, and a bare `HashMap`
/// of the same receipts under the same keys.
async fn filled(live: u64) -> (Idem, HashMap<String, Vec<u8>>) {
    let idem = Idem::with_settings(roomy_store(), &Config::default());
    idem.scope(async {
        for order in 0..live {
            charge(order).await.unwrap();
        }
    })
    .await;
    let map = (0..live)
        .map(|order| {
            let json = serde_json::to_vec(&receipt(order)).unwrap();
            (store_key(order), json)
        })
        .collect();
    (idem, map)
}

/// A bare `HashMap`'s replay of a random one of its `live` receipts.
fn lookup(map: &HashMap<String, Vec<u8>>, live: u64) {
    let stored = &map[&store_key(below(live))];
    black_box(serde_json::from_slice::<Receipt>(stored).unwrap());
}

/// A claim refused by a full memory store, with 1k and with 100k live records: the cost of a
/// flood of new keys against a store that cannot take them. A refused claim looks at no record
/// until one may have expired, so its cost does not grow with the records held.
pub async fn refused(report: &mut Report, plan: &Plan) {
    report.section("Memory store, full: a refused claim (a flood of new keys)");
    let mut first = None;
    for (live, label) in [(1_000, "1k"), (100_000, "100k")] {
        let idem = Idem::with_settings(MemoryStore::with_capacity(live), &Config::default());
        idem.scope(async {
            for order in 0..live as u64 {
                charge(order).await.unwrap();
            }
            charge(fresh()).await.expect_err("the store is full");
        })
        .await;
        let cost = idem
            .scope(latency(plan, async || {
                black_box(charge(fresh()).await.unwrap_err());
            }))
            .await;
        match &first {
            None => {
                report.add(
                    &format!("refused claim, {label} live records"),
                    (Quantity::Nanos(cost.median), Some(cost.clone())),
                    None,
                    None,
                );
                first = Some(cost);
            }
            Some(base) => report.add(
                &format!("refused claim, {label} live records"),
                (Quantity::Nanos(cost.median), Some(cost)),
                Some(("with 1k", Quantity::Nanos(base.median), Some(base.clone()))),
                Some(Target::RatioAtMost(2.0)),
            ),
        }
    }
}
