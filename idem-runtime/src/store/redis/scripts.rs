//! The Lua scripts of the fenced operations.
//!
//! Forgetting a key (an operator's `idem::forget`) is a script too, for the same reason:
//! `DEL` and the wake-up of the waiters in one atomic step. So is issuing a token within a
//! bound, which touches two keys of one hash tag (the scope's group and the token), and
//! redeeming one, which sets the redeemed token's expiry on its first redemption only.
//!
//! Each script touches one key (`KEYS[1]`) and applies its write only while the key holds
//! exactly the claim's bytes (`ARGV[1]`): the compare-and-set that fences a holder whose lease
//! ended. Completing and releasing publish on the channel named like the key, which wakes the
//! waiters (see `waiters.rs`). A channel named like its key hashes to the key's slot, so on a
//! Redis Cluster the scripts stay single-slot and publish with `SPUBLISH` (sharded pub/sub:
//! the message stays within the key's shard instead of being broadcast to every node); on one
//! server they use `PUBLISH`, which redis-rs's single-server connection can subscribe to.
//!
//! They are sent by SHA1 (`EVALSHA`); the store loads the source again when the server
//! answers `NOSCRIPT` (after `SCRIPT FLUSH`, a restart, or on a node that joined the cluster
//! later), and [`RedisStore::connect`] loads them up front so that the first call costs no
//! extra round trip.
//!
//! [`RedisStore::connect`]: super::RedisStore::connect

use std::sync::LazyLock;

use redis::Script;

/// `ARGV`: claim bytes, payload, ttl in ms. Returns 1 when the claim held the key, and also
/// when the key already holds this very payload: a completion sent again after its answer was
/// lost (a retry over a new connection) finds its own result and stores it again, so that it
/// is not mistaken for a lost lease and a following `WAIT` covers it.
macro_rules! complete {
    ($publish:literal) => {
        concat!(
            r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('",
            $publish,
            r"', KEYS[1], 'complete')
  return 1
end
return 0
"
        )
    };
}

/// `ARGV`: claim bytes. Returns 1 when the claim held the key.
macro_rules! release {
    ($publish:literal) => {
        concat!(
            r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('",
            $publish,
            r"', KEYS[1], 'release')
  return 1
end
return 0
"
        )
    };
}

/// No `ARGV`. Deletes the key whatever it holds and, when there was one, wakes its waiters.
/// Returns 1 when a record was deleted.
macro_rules! forget {
    ($publish:literal) => {
        concat!(
            r"
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('",
            $publish,
            r"', KEYS[1], 'forget')
  return 1
end
return 0
"
        )
    };
}

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

/// `KEYS`: a token scope's group (a sorted set of its bounded tokens by expiry, in ms) and the
/// token's record, which share a hash tag (one slot). `ARGV`: token, ttl in ms, bound.
/// Drops the group's expired tokens, and when fewer than the bound are left adds the token to
/// the group and stores its record: returns 1; otherwise 0 and nothing is stored. The time is
/// the server's (`TIME`), as the expiries of its keys are.
const ISSUE_TOKEN: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
local expires = ms + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
if redis.call('PEXPIRETIME', KEYS[1]) < expires then
  redis.call('PEXPIREAT', KEYS[1], expires)
end
redis.call('SET', KEYS[2], 'issued', 'PX', ARGV[2])
return 1
";

/// `KEYS`: a token's record. `ARGV`: keep in ms. Marks a live token redeemed, and only the
/// first time sets its expiry to `keep` (a duplicate leaves it: a mark that outlived the call's
/// record would let a late duplicate run the call again). Returns what the key held before:
/// nothing (unknown or expired), `issued` (this redemption consumed it) or `redeemed`.
const REDEEM_TOKEN: &str = r"
local held = redis.call('GET', KEYS[1])
if held == 'issued' then
  redis.call('SET', KEYS[1], 'redeemed', 'PX', ARGV[1])
end
return held
";

/// One script: its source and its SHA1, computed once.
pub(super) struct Lua {
    pub(super) source: &'static str,
    pub(super) script: Script,
}

impl Lua {
    fn new(source: &'static str) -> Lua {
        Lua {
            source,
            script: Script::new(source),
        }
    }

    /// The SHA1 that `EVALSHA` names.
    pub(super) fn sha(&self) -> &str {
        self.script.get_hash()
    }
}

/// The scripts of one kind of deployment.
pub(super) struct Scripts {
    pub(super) complete: Lua,
    pub(super) release: Lua,
    pub(super) renew: Lua,
    pub(super) peek: Lua,
    pub(super) forget: Lua,
    pub(super) issue_token: Lua,
    pub(super) redeem_token: Lua,
}

impl Scripts {
    /// Every script, for `SCRIPT LOAD` at connect time.
    pub(super) fn all(&self) -> [&Lua; 7] {
        [
            &self.complete,
            &self.release,
            &self.renew,
            &self.peek,
            &self.forget,
            &self.issue_token,
            &self.redeem_token,
        ]
    }
}

/// The scripts for one Redis server: they wake waiters with `PUBLISH`.
pub(super) static NODE: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    complete: Lua::new(complete!("PUBLISH")),
    release: Lua::new(release!("PUBLISH")),
    renew: Lua::new(RENEW),
    peek: Lua::new(PEEK),
    forget: Lua::new(forget!("PUBLISH")),
    issue_token: Lua::new(ISSUE_TOKEN),
    redeem_token: Lua::new(REDEEM_TOKEN),
});

/// The scripts for a Redis Cluster: they wake waiters with `SPUBLISH`, within the key's shard.
pub(super) static CLUSTER: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    complete: Lua::new(complete!("SPUBLISH")),
    release: Lua::new(release!("SPUBLISH")),
    renew: Lua::new(RENEW),
    peek: Lua::new(PEEK),
    forget: Lua::new(forget!("SPUBLISH")),
    issue_token: Lua::new(ISSUE_TOKEN),
    redeem_token: Lua::new(REDEEM_TOKEN),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_scripts_publish_within_the_shard() {
        assert!(
            NODE.complete
                .source
                .contains("redis.call('PUBLISH', KEYS[1]")
        );
        assert!(
            CLUSTER
                .complete
                .source
                .contains("redis.call('SPUBLISH', KEYS[1]")
        );
        assert!(
            CLUSTER
                .release
                .source
                .contains("redis.call('SPUBLISH', KEYS[1]")
        );
        assert!(
            CLUSTER
                .forget
                .source
                .contains("redis.call('SPUBLISH', KEYS[1]")
        );
        assert_ne!(NODE.complete.sha(), CLUSTER.complete.sha());
        assert_eq!(NODE.renew.sha(), CLUSTER.renew.sha());
    }
}
