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
        Some(Target::OverheadAtMost(1_000.0)),
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
        Some(Target::OverheadAtMost(300.0)),
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

/// The cost of a replay of a random live key with 1k, 100k and 1M live keys; beside it, the
/// same lookups in a bare `HashMap` (find the key, decode the stored JSON): how much of the
/// growth is the memory hierarchy's, not the store's.
pub async fn scaling(report: &mut Report, plan: &Plan) {
    report.section("Memory store, scaling: replay of a random live key");
    let idem = Idem::with_settings(roomy_store(), &Config::default());
    let mut bare: HashMap<String, Vec<u8>> = HashMap::new();
    let mut filled = 0;
    let mut first = None;
    for (live, label) in [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")] {
        idem.scope(async {
            for order in filled..live {
                charge(order).await.unwrap();
            }
        })
        .await;
        for order in filled..live {
            bare.insert(
                store_key(order),
                serde_json::to_vec(&receipt(order)).unwrap(),
            );
        }
        filled = live;
        let cost = idem
            .scope(latency(plan, async || {
                black_box(charge(below(live)).await.unwrap());
            }))
            .await;
        let map = latency(plan, async || {
            let stored = &bare[&store_key(below(live))];
            black_box(serde_json::from_slice::<Receipt>(stored).unwrap());
        })
        .await;
        let (base, base_map) = first
            .get_or_insert_with(|| (cost.clone(), map.clone()))
            .clone();
        if live == 1_000 {
            report.add(
                &format!("{label} live keys"),
                (Quantity::Nanos(cost.median), Some(cost)),
                None,
                None,
            );
            report.add(
                &format!("{label} live keys, bare HashMap lookup + decode"),
                (Quantity::Nanos(map.median), Some(map)),
                None,
                None,
            );
        } else {
            report.add(
                &format!("{label} live keys"),
                (Quantity::Nanos(cost.median), Some(cost)),
                Some(("with 1k keys", Quantity::Nanos(base.median), Some(base))),
                Some(Target::RatioAtMost(1.5)),
            );
            report.add(
                &format!("{label} live keys, bare HashMap lookup + decode"),
                (Quantity::Nanos(map.median), Some(map)),
                Some((
                    "with 1k keys",
                    Quantity::Nanos(base_map.median),
                    Some(base_map),
                )),
                None,
            );
        }
    }
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
