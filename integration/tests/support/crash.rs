//! What the crash tests of the transactional mode share (`postgres_tx_crash.rs`,
//! `sqlite_tx_crash.rs`): workers that print one line per committed call, SIGKILLed and
//! started again at random moments, and what the test gathers from their lines.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use super::workers::Workers;

/// A small random number generator (xorshift), seeded per process.
pub struct Random(u64);

impl Random {
    pub fn new() -> Random {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Random((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// Shuffles `items` in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// What a crash test gathers from its workers' lines.
pub trait Lines {
    /// Takes one line a worker printed.
    fn take(&mut self, line: &str);
    /// Whether the worker of process id `pid` said it walked its whole list.
    fn done(&self, pid: u32) -> bool;
}

impl Lines for Seen {
    fn take(&mut self, line: &str) {
        Seen::take(self, line);
    }

    fn done(&self, pid: u32) -> bool {
        self.done.contains(&pid)
    }
}

/// What the workers printed: `call <key> <value> <micros>` per committed call, `body <key>`
/// when a body ran (before its transaction's end), `done <pid>` when a worker walked its list.
#[derive(Default)]
pub struct Seen {
    pub values: BTreeMap<u64, Vec<i64>>,
    pub calls: usize,
    pub bodies: usize,
    pub longest: Duration,
    /// The workers (by process id) that walked the whole list.
    pub done: HashSet<u32>,
}

impl Seen {
    pub fn take(&mut self, line: &str) {
        if let Some(pid) = line.strip_prefix("done ") {
            self.done.insert(pid.parse().expect("a process id"));
            return;
        }
        if line.starts_with("body ") {
            self.bodies += 1;
            return;
        }
        let mut parts = line.split(' ');
        let (Some("call"), Some(key), Some(value), Some(micros)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("a worker printed {line:?}");
        };
        let key: u64 = key.parse().expect("a key");
        self.values
            .entry(key)
            .or_default()
            .push(value.parse().expect("a value"));
        self.longest = self
            .longest
            .max(Duration::from_micros(micros.parse().expect("micros")));
        self.calls += 1;
    }
}

/// SIGKILLs a random one of the two `workers` (and starts it again) every 20 to 170 ms, for
/// at most `killing`, or until `min_kills` happened and half of it passed; reads their lines
/// meanwhile. Returns how many kills, and how long it took.
pub fn kill_at_random(
    workers: &mut Workers,
    seen: &mut impl Lines,
    min_kills: usize,
    killing: Duration,
) -> (usize, Duration) {
    let mut random = Random::new();
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < killing && (kills < min_kills || started.elapsed() < killing / 2) {
        let pause = Duration::from_millis(20 + random.below(150));
        let until = Instant::now() + pause;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match workers.line_within(left) {
                Some((_, line)) => seen.take(&line),
                None => break,
            }
        }
        // A worker that already finished its list is started again: it replays every key.
        workers.restart(random.below(2) as usize);
        kills += 1;
    }
    (kills, started.elapsed())
}

/// With no more kills, reads the lines of both workers until each has walked the list (at most
/// `within`), and waits for them to exit.
pub fn finish(workers: Workers, seen: &mut impl Lines, within: Duration) {
    let deadline = Instant::now() + within;
    while !(0..2).all(|n| seen.done(workers.pid(n))) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("both workers finish within {within:?} after the last kill"));
        match workers.line_within(left) {
            Some((_, line)) => seen.take(&line),
            None => panic!("waiting for the workers: no line within {left:?}"),
        }
    }
    workers.finish(within);
}

/// Checks the business rows `(key, row id)` the workers left: exactly one per key of `0..keys`,
/// and every value a call of the key returned is that row's id. Returns each key's row id.
pub fn one_row_per_key(rows: &[(i64, i64)], seen: &Seen, keys: u64) -> BTreeMap<i64, i64> {
    let mut per_key: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (key, id) in rows {
        per_key.entry(*key).or_default().push(*id);
    }
    assert_eq!(per_key.len() as u64, keys, "every key has its row");
    per_key
        .into_iter()
        .map(|(key, ids)| {
            assert_eq!(ids.len(), 1, "key {key} has the business rows {ids:?}");
            // A worker killed between its commit and its report printed nothing for the key.
            let values = seen
                .values
                .get(&(key as u64))
                .map_or(&[][..], Vec::as_slice);
            assert!(
                values.iter().all(|v| v == &ids[0]),
                "key {key}: row {} but the calls returned {values:?}",
                ids[0]
            );
            (key, ids[0])
        })
        .collect()
}
