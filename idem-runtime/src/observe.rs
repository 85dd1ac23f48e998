//! The metrics idem reports (see the crate docs for the names).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

/// The counter of calls by scope and outcome.
pub const CALLS_TOTAL: &str = "idem_calls_total";
/// The counter of records forgotten by [`forget`](crate::forget), by scope.
pub const FORGET_TOTAL: &str = "idem_forget_total";
/// The histogram of store operation latency in seconds, by operation.
pub const STORE_SECONDS: &str = "idem_store_seconds";

/// How a call ended, as the `outcome` label of [`CALLS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ending {
    Executed,
    Replayed,
    Waited,
    Rejected,
    Mismatch,
    StoreError,
    LeaseLost,
    FailOpen,
    DecodeError,
    NotStored,
    Unstorable,
    ConfigError,
    FingerprintError,
    Conflict,
    Abandoned,
}

impl Ending {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Ending::Executed => "executed",
            Ending::Replayed => "replayed",
            Ending::Waited => "waited",
            Ending::Rejected => "rejected",
            Ending::Mismatch => "mismatch",
            Ending::StoreError => "store_error",
            Ending::LeaseLost => "lease_lost",
            Ending::FailOpen => "fail_open",
            Ending::DecodeError => "decode_error",
            Ending::NotStored => "not_stored",
            Ending::Unstorable => "unstorable",
            Ending::ConfigError => "config_error",
            Ending::FingerprintError => "fingerprint_error",
            Ending::Conflict => "conflict",
            Ending::Abandoned => "abandoned",
        }
    }
}

/// Where idem's counters and histograms are registered from.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// How many counter keys a thread keeps at most (a program has as many static scopes as
/// idempotent functions; a key beyond this is built for each call).
const KEPT_KEYS: usize = 4_096;

thread_local! {
    /// The counter keys of static scopes (by the scope's address and length) and outcomes,
    /// built once per thread: counting a call then allocates nothing and hashes no label.
    static KEYS: RefCell<HashMap<(usize, usize, Ending), metrics::Key, MixHasher>> =
        const { RefCell::new(HashMap::with_hasher(MixHasher)) };
}

/// A hasher for [`KEYS`]: its keys are an address, a length and an outcome, from this
/// process, so a multiply-rotate mix spreads them well enough, for far less than SipHash.
#[derive(Clone, Copy, Default)]
struct MixHasher;

impl BuildHasher for MixHasher {
    type Hasher = Mixer;
    fn build_hasher(&self) -> Mixer {
        Mixer(0)
    }
}

struct Mixer(u64);

impl Hasher for Mixer {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

fn key_of(scope: metrics::SharedString, outcome: Ending) -> metrics::Key {
    metrics::Key::from_parts(
        CALLS_TOTAL,
        vec![
            metrics::Label::new("scope", scope),
            metrics::Label::from_static_parts("outcome", outcome.label()),
        ],
    )
}

fn increment(key: &metrics::Key) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
}

/// Counts a [`forget`](crate::forget) of `scope` in `idem_forget_total`.
pub(crate) fn count_forget(scope: &str) {
    let key = metrics::Key::from_parts(
        FORGET_TOTAL,
        vec![metrics::Label::new("scope", scope.to_owned())],
    );
    increment(&key);
}

/// Counts a call of `scope` that ended with `outcome` in `idem_calls_total`.
#[allow(
    clippy::ptr_arg,
    reason = "a borrowed static scope becomes a label without allocating"
)]
pub(crate) fn count(scope: &Cow<'static, str>, outcome: Ending) {
    let scope = match scope {
        Cow::Borrowed(scope) => scope,
        Cow::Owned(scope) => return increment(&key_of(scope.clone().into(), outcome)),
    };
    let at = (scope.as_ptr() as usize, scope.len(), outcome);
    let counted = KEYS.try_with(|keys| {
        // Borrowed already only when a recorder, while counting, made an idempotent call.
        let Ok(mut keys) = keys.try_borrow_mut() else {
            return false;
        };
        if let Some(key) = keys.get(&at) {
            increment(key);
            return true;
        }
        if keys.len() >= KEPT_KEYS {
            return false;
        }
        let key = keys
            .entry(at)
            .or_insert_with(|| key_of(metrics::SharedString::const_str(scope), outcome));
        increment(key);
        true
    });
    if counted != Ok(true) {
        increment(&key_of(metrics::SharedString::const_str(scope), outcome));
    }
}

/// A store operation, as the `op` label of [`STORE_SECONDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    Claim,
    Complete,
    Release,
    Renew,
    Wait,
}

/// The histogram key of one operation, built at compile time: recording a latency then
/// allocates nothing and hashes no label.
macro_rules! store_key {
    ($op:literal) => {{
        static LABELS: [metrics::Label; 1] = [metrics::Label::from_static_parts("op", $op)];
        static KEY: metrics::Key = metrics::Key::from_static_parts(STORE_SECONDS, &LABELS);
        &KEY
    }};
}

impl StoreOp {
    fn key(self) -> &'static metrics::Key {
        match self {
            StoreOp::Claim => store_key!("claim"),
            StoreOp::Complete => store_key!("complete"),
            StoreOp::Release => store_key!("release"),
            StoreOp::Renew => store_key!("renew"),
            StoreOp::Wait => store_key!("wait"),
        }
    }
}

/// Runs one store operation and, when `on` ([`Config::store_latency`]), records its latency.
///
/// [`Config::store_latency`]: crate::Config::store_latency
pub(crate) async fn timed<T>(on: bool, op: StoreOp, future: impl Future<Output = T>) -> T {
    if !on {
        return future.await;
    }
    let start = Instant::now();
    let out = future.await;
    let seconds = start.elapsed().as_secs_f64();
    metrics::with_recorder(|recorder| recorder.register_histogram(op.key(), &METADATA))
        .record(seconds);
    out
}
