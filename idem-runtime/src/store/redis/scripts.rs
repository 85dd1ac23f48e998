//! The Lua scripts of the fenced operations.
//!
//! Each script touches one key (`KEYS[1]`) and applies its write only while the key holds
//! exactly the claim's bytes (`ARGV[1]`): the compare-and-set that fences a holder whose lease
//! ended. Completing and releasing publish on the channel named like the key, which wakes the
//! waiters (see `waiters.rs`); a channel named like its key hashes to the key's slot, so the
//! scripts stay single-slot for Redis Cluster.
//!
//! They are sent by SHA1 (`EVALSHA`): [`redis::Script`] loads the source again when the server
//! answers `NOSCRIPT` (after `SCRIPT FLUSH` or a restart), and [`RedisStore::connect`] loads
//! them up front so that the first call costs no extra round trip.
//!
//! [`RedisStore::connect`]: super::RedisStore::connect

use std::sync::LazyLock;

use redis::Script;

/// `ARGV`: claim bytes, payload, ttl in ms. Returns 1 when the claim held the key.
const COMPLETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('PUBLISH', KEYS[1], 'complete')
  return 1
end
return 0
";

/// `ARGV`: claim bytes. Returns 1 when the claim held the key.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], 'release')
  return 1
end
return 0
";

/// `ARGV`: claim bytes, lease in ms. Returns 1 when the claim held the key.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// `ARGV`: claim bytes. Returns the lease left in ms while the claim holds the key, else -2.
const PEEK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PTTL', KEYS[1])
end
return -2
";

/// The scripts, with their SHA1 computed once.
pub(super) struct Scripts {
    pub(super) complete: Script,
    pub(super) release: Script,
    pub(super) renew: Script,
    pub(super) peek: Script,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    complete: Script::new(COMPLETE),
    release: Script::new(RELEASE),
    renew: Script::new(RENEW),
    peek: Script::new(PEEK),
});

/// The sources, for `SCRIPT LOAD` at connect time.
pub(super) const SOURCES: [&str; 4] = [COMPLETE, RELEASE, RENEW, PEEK];
