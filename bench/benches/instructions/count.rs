//! The child side: one operation, set up and warmed up outside the counted function, then
//! called `calls` times inside it.

use std::hint::black_box;

use idem::{Config, Idem, MemoryStore};
use tokio::runtime::Runtime;

use crate::by_hand;
use crate::workload::{charge, direct, fresh, store_key};

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
    /// A replay through idem on `RedisStore`.
    RedisReplay,
    /// A first call through idem on `RedisStore`.
    RedisFirst,
}

impl Operation {
    /// Every operation, in the order they are counted.
    pub const ALL: [Operation; 8] = [
        Operation::Direct,
        Operation::MemoryReplay,
        Operation::LocalCacheReplay,
        Operation::RawGet,
        Operation::FloorReplay,
        Operation::FloorFirst,
        Operation::RedisReplay,
        Operation::RedisFirst,
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
            Operation::RedisReplay => "redis-replay",
            Operation::RedisFirst => "redis-first",
        }
    }

    fn named(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
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
        _ => {
            let url = args
                .get(2)
                .expect("the URL of the benchmark's redis-server");
            on_redis(&runtime, op, calls, url);
        }
    }
}

fn on_redis(runtime: &Runtime, op: Operation, calls: u64, url: &str) {
    let idem = runtime
        .block_on(Idem::connect(&Config::default().store(url)))
        .expect("idem: connect");
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
        Operation::RedisReplay => measure(runtime, Some(&idem), calls, async || {
            black_box(charge(black_box(7)).await.unwrap());
        }),
        Operation::RedisFirst => measure(runtime, Some(&idem), calls, async || {
            black_box(charge(fresh()).await.unwrap());
        }),
        Operation::Direct | Operation::MemoryReplay | Operation::LocalCacheReplay => {
            unreachable!("{op:?} runs in memory")
        }
    }
}
