//! The child side: one operation, set up and warmed up outside the counted function, then
//! called `calls` times inside it.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use idem::store::{Claim, Record};
use idem::{Config, Idem, MemoryStore, Store};
use tokio::runtime::Runtime;

use crate::by_hand;
use crate::workload::{Receipt, TTL, below, charge, direct, fresh, fresh_from, store_key};

/// Calls made before the counted ones: connections open, caches and lazy statics filled.
const WARM_UP: u64 = 200;

/// What is counted, one child process each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// The function called directly: the baseline of the in-process rows.
    Direct,
    /// A replay from the `MemoryStore`.
    MemoryReplay,
    /// A replay from the local cache, in front of a `MemoryStore`.
    LocalCacheReplay,
    /// A raw `GET` of the record on one multiplexed connection.
    RawGet,
    /// idem's replay sent by hand: `SET NX PX GET`.
    FloorReplay,
    /// idem's first call sent by hand: `SET NX PX GET`, then `EVALSHA` of the completion.
    FloorFirst,
    /// [`FloorReplay`](Operation::FloorReplay), and the value decoded from the record: what
    /// any replay by hand does before its caller has the value.
    FloorReplayDecoded,
    /// [`FloorFirst`](Operation::FloorFirst), with the value serialized for the completion:
    /// what any first call by hand does before it can store its result.
    FloorFirstEncoded,
    /// A replay through idem on `RedisStore`.
    RedisReplay,
    /// A first call through idem on `RedisStore`.
    RedisFirst,
    /// A replay through idem on `RedisStore::from_deadpool` (a deadpool-redis pool).
    DeadpoolReplay,
    /// A first call through idem on `RedisStore::from_deadpool`.
    DeadpoolFirst,
    /// A replay of a random one of this many live records in the `MemoryStore`.
    MemoryReplayAmong(u64),
    /// The same lookup and decode in a bare `HashMap<String, Vec<u8>>` of this many records.
    MapLookupAmong(u64),
}

impl Operation {
    /// Every operation, in the order they are counted.
    pub const ALL: [Operation; 12] = [
        Operation::Direct,
        Operation::MemoryReplay,
        Operation::LocalCacheReplay,
        Operation::RawGet,
        Operation::FloorReplay,
        Operation::FloorFirst,
        Operation::FloorReplayDecoded,
        Operation::FloorFirstEncoded,
        Operation::RedisReplay,
        Operation::RedisFirst,
        Operation::DeadpoolReplay,
        Operation::DeadpoolFirst,
    ];

    /// The operations whose cache misses are counted too: the memory store at scale.
    pub const AT_SCALE: [Operation; 6] = [
        Operation::MemoryReplayAmong(1_000),
        Operation::MemoryReplayAmong(100_000),
        Operation::MemoryReplayAmong(1_000_000),
        Operation::MapLookupAmong(1_000),
        Operation::MapLookupAmong(100_000),
        Operation::MapLookupAmong(1_000_000),
    ];

    /// Its name on the child's command line.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Direct => "direct",
            Operation::MemoryReplay => "memory-replay",
            Operation::LocalCacheReplay => "local-cache-replay",
            Operation::RawGet => "raw-get",
            Operation::FloorReplay => "floor-replay",
            Operation::FloorFirst => "floor-first",
            Operation::FloorReplayDecoded => "floor-replay-decoded",
            Operation::FloorFirstEncoded => "floor-first-encoded",
            Operation::RedisReplay => "redis-replay",
            Operation::RedisFirst => "redis-first",
            Operation::DeadpoolReplay => "deadpool-replay",
            Operation::DeadpoolFirst => "deadpool-first",
            Operation::MemoryReplayAmong(1_000) => "memory-replay-1k",
            Operation::MemoryReplayAmong(100_000) => "memory-replay-100k",
            Operation::MemoryReplayAmong(_) => "memory-replay-1m",
            Operation::MapLookupAmong(1_000) => "map-lookup-1k",
            Operation::MapLookupAmong(100_000) => "map-lookup-100k",
            Operation::MapLookupAmong(_) => "map-lookup-1m",
        }
    }

    fn named(name: &str) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .chain(Operation::AT_SCALE)
            .find(|op| op.name() == name)
    }
}

/// Runs `calls` calls of `op`, inside `idem`'s scope when there is one.
fn run_calls<F: AsyncFnMut()>(runtime: &Runtime, idem: Option<&Idem>, calls: u64, op: &mut F) {
    let calls = async {
        for _ in 0..calls {
            op().await;
        }
    };
    match idem {
        Some(idem) => runtime.block_on(idem.scope(calls)),
        None => runtime.block_on(calls),
    }
}

/// The function callgrind counts in (`--toggle-collect`): everything the client thread runs
/// while in it, the runtime's polling and the connection's driver task included.
#[inline(never)]
fn counted_calls<F: AsyncFnMut()>(runtime: &Runtime, idem: Option<&Idem>, calls: u64, op: &mut F) {
    run_calls(runtime, idem, calls, op);
}

/// Warms `op` up, then counts `calls` calls of it.
fn measure<F: AsyncFnMut()>(runtime: &Runtime, idem: Option<&Idem>, calls: u64, mut op: F) {
    run_calls(runtime, idem, WARM_UP, &mut op);
    counted_calls(runtime, idem, calls, &mut op);
}

/// The child's entry: `<operation> <calls> [<redis url>]`.
pub fn child(args: &[String]) {
    let op = args
        .first()
        .and_then(|name| Operation::named(name))
        .expect("an operation to count");
    let calls: u64 = args
        .get(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of calls");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let in_memory = |config: &Config| {
        let idem = Idem::with_settings(MemoryStore::with_capacity(1_000), config);
        runtime
            .block_on(idem.scope(charge(7)))
            .expect("the first call");
        idem
    };
    match op {
        Operation::Direct => measure(&runtime, None, calls, async || {
            black_box(direct(black_box(7)).await);
        }),
        Operation::MemoryReplay => {
            let idem = in_memory(&Config::default());
            measure(&runtime, Some(&idem), calls, async || {
                black_box(charge(black_box(7)).await.unwrap());
            });
        }
        Operation::LocalCacheReplay => {
            let idem = in_memory(&Config::default().local_cache(1_000));
            measure(&runtime, Some(&idem), calls, async || {
                black_box(charge(black_box(7)).await.unwrap());
            });
        }
        Operation::MemoryReplayAmong(live) => {
            let store = MemoryStore::with_capacity(live as usize);
            let idem = Idem::with_settings(store.clone(), &Config::default());
            fill(&runtime, &idem, &store, live);
            measure(&runtime, Some(&idem), calls, async || {
                black_box(charge(below(live)).await.unwrap());
            });
        }
        Operation::MapLookupAmong(live) => {
            let json = serde_json::to_vec(&crate::workload::receipt(0)).expect("JSON");
            let map: HashMap<String, Vec<u8>> = (0..live)
                .map(|order| (store_key(order), json.clone()))
                .collect();
            measure(&runtime, None, calls, async || {
                let stored = &map[&store_key(below(live))];
                black_box(serde_json::from_slice::<Receipt>(stored).unwrap());
            });
        }
        _ => {
            let url = args
                .get(2)
                .expect("the URL of the benchmark's redis-server");
            on_redis(&runtime, op, calls, url);
        }
    }
}

/// Fills `store` with `live` completed records of [`charge`], each holding order 0's result:
/// one call through idem, then the store's own operations (cheaper under valgrind).
fn fill(runtime: &Runtime, idem: &Idem, store: &MemoryStore, live: u64) {
    runtime
        .block_on(idem.scope(charge(0)))
        .expect("the first call");
    let lease = Duration::from_secs(30);
    let Ok(Some(Record::Completed { payload, .. })) =
        ready(store.claim(&store_key(0), &Claim::new(None), lease))
    else {
        panic!("order 0 is completed");
    };
    for order in 1..live {
        let (key, claim) = (store_key(order), Claim::new(None));
        assert!(matches!(ready(store.claim(&key, &claim, lease)), Ok(None)));
        ready(store.complete(&key, &claim, &payload, TTL)).expect("complete");
    }
}

/// The result of a memory store's operation, which is ready at once.
fn ready<T>(
    future: impl std::future::Future<Output = Result<T, idem::StoreError>>,
) -> Result<T, idem::StoreError> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut context) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => unreachable!("memory store operations are ready at once"),
    }
}

fn on_redis(runtime: &Runtime, op: Operation, calls: u64, url: &str) {
    let idem = match op {
        Operation::DeadpoolReplay | Operation::DeadpoolFirst => {
            let pool = deadpool_redis::Config::from_url(url)
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .expect("a deadpool-redis pool");
            let store = runtime
                .block_on(idem::RedisStore::from_deadpool(pool))
                .expect("idem: from_deadpool");
            Idem::with_settings(store, &Config::default())
        }
        _ => runtime
            .block_on(Idem::connect(&Config::default().store(url)))
            .expect("idem: connect"),
    };
    runtime
        .block_on(idem.scope(charge(7)))
        .expect("the record of order 7");
    let client = redis::Client::open(url).expect("the server's URL");
    let mut conn = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("connect to the benchmark's redis-server");
    let payload: Vec<u8> = runtime
        .block_on(redis::cmd("GET").arg(store_key(7)).query_async(&mut conn))
        .expect("the record idem stored");
    match op {
        Operation::RawGet => measure(runtime, None, calls, async || {
            by_hand::get(&mut conn).await;
        }),
        Operation::FloorReplay => measure(runtime, None, calls, async || {
            by_hand::replay(&mut conn).await;
        }),
        Operation::FloorFirst => measure(runtime, None, calls, async || {
            by_hand::first(&mut conn, &payload).await;
        }),
        Operation::FloorReplayDecoded => {
            // Where the value starts in the record idem stored (found once, not per call).
            const SIDE: &[u8] = b"\"ok\":";
            let start = payload
                .windows(SIDE.len())
                .position(|w| w == SIDE)
                .expect("a stored value")
                + SIDE.len();
            measure(runtime, None, calls, async || {
                let found = by_hand::claim(&mut conn, &store_key(7))
                    .await
                    .expect("the record is stored");
                let value = &found[start..found.len() - 1];
                black_box(serde_json::from_slice::<Receipt>(value).expect("a receipt"));
            })
        }
        Operation::FloorFirstEncoded => {
            // The floor's first calls of another process may have used the default range.
            fresh_from(3_000_000_000 + u64::from(std::process::id()) * 1_000_000);
            measure(runtime, None, calls, async || {
                let value = serde_json::to_vec(&crate::workload::receipt(7)).expect("JSON");
                by_hand::first(&mut conn, &value).await;
            })
        }
        Operation::RedisReplay | Operation::DeadpoolReplay => {
            measure(runtime, Some(&idem), calls, async || {
                black_box(charge(black_box(7)).await.unwrap());
            })
        }
        Operation::RedisFirst | Operation::DeadpoolFirst => {
            // Children run one after another on the same server: orders of this process only.
            fresh_from(2_000_000_000 + u64::from(std::process::id()) * 1_000_000);
            measure(runtime, Some(&idem), calls, async || {
                black_box(charge(fresh()).await.unwrap());
            })
        }
        _ => unreachable!("{op:?} runs in memory"),
    }
}
