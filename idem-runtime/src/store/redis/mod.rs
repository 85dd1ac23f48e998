//! [`RedisStore`]: the store shared by processes and machines, on Redis 7.0 or later, one
//! server or a Redis Cluster.
//!
//! Every operation on a call's record touches that one key, so each is atomic and single-slot (no `CROSSSLOT` on a
//! Cluster, where it runs on the master of the key's slot):
//!
//! | operation | Redis | round trips |
//! |---|---|---|
//! | claim (or read the record) | `SET key claim NX PX lease GET` | 1 |
//! | complete | script: compare with the claim, `SET payload PX ttl`, `(S)PUBLISH` | 1 |
//! | release | script: compare with the claim, `DEL`, `(S)PUBLISH` | 1 |
//! | renew | script: compare with the claim, `PEXPIRE` | 1 |
//! | wait | `(S)SUBSCRIBE` (once per key and process), script: compare and `PTTL` | 2 |
//! | inspect (operators) | `GET key` and `PTTL key`, pipelined | 1 |
//! | forget (operators) | script: `DEL`, `(S)PUBLISH` when it deleted a record | 1 |
//! | stats (operators) | `DBSIZE`; per page of 1000 keys, `SCAN … MATCH prefix* TYPE string` and pipelined `GETRANGE key 0 7` (see `stats.rs`) | 1 + 2 per page |
//! | issue a token | `SET record issued NX PX ttl`; within a bound, a script on the token and its scope's group, one hash tag (see `tokens.rs`) | 1 |
//! | redeem a token | script: `GET record`, and the first time `SET record redeemed PX keep` | 1 |
//!
//! So a replay costs one round trip and a first call two. With `min_replicas`, claim and
//! complete send `WAIT` in the same round trip, right behind their write.
//!
//! This file holds the store and its operations; the rest, one concern per file:
//! - `connect.rs`: making a store (from a `Config`, a URL and options, a client, a pool);
//! - `options.rs`: [`RedisOptions`], and how they are read from a `Config`;
//! - `checks.rs`: what `connect` checks before the first call (version, deployment, eviction);
//! - `command.rs`: the path of every command (lent connection, timeout, a missing script
//!   loaded, a closed connection replaced, the answer read);
//! - `connections.rs`: the connections commands go over, shared and pipelined to one server, one
//!   operation at a time per Cluster connection; `servers.rs`: one server or a Cluster, from
//!   the URL; `runtimes.rs`: the runtime that drives them (the callers' while they come
//!   from one, idem's own once they come from more);
//! - `scripts.rs`: the Lua scripts, run by SHA; `waiters.rs`: pub/sub that wakes waiting
//!   calls; `failure.rs`: which errors mean what; `stats.rs`: the operator's count;
//!   `pooled.rs`: an application's deadpool-redis pool; `tokens.rs`: server-issued tokens.
//!
//! On an application's `deadpool_redis::Pool` (`from_deadpool`, feature `deadpool-redis`),
//! each operation checks a connection out of the pool instead and sends the same commands on
//! it (see `pooled.rs`): deadpool-redis's `UNWATCH`+`PING` at each checkout adds a round trip
//! per operation, and waiters look at their key every 50 ms instead of subscribing.

mod checks;
mod command;
mod connect;
mod connections;
mod failure;
mod options;
#[cfg(feature = "deadpool-redis")]
mod pooled;
mod runtimes;
mod scripts;
mod servers;
mod stats;
mod tokens;
mod waiters;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Cmd;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::record::{Claim, Record};
use crate::store::{DynStore, Fence, Inspection, Issue, Redemption, Stats, Store, TokenKey};

pub use self::options::RedisOptions;

use self::command::{Query, Shared, millis};

/// The connections kept to one server by default: multiplexed and shared, one is enough.
const NODE_POOL: usize = 1;

/// The Cluster connections kept by default: each carries one operation at a time.
const CLUSTER_POOL: usize = 16;

/// How long after the holder's lease ends a waiter looks again, for Redis to have expired it.
const LEASE_GRACE: Duration = Duration::from_millis(2);

/// How long a waiter sleeps between looks when pub/sub is unavailable.
const FALLBACK_POLL: Duration = Duration::from_millis(50);

/// How long a waiter on a Cluster sleeps at most between looks. A completion is published on
/// the node that runs the script; while its slot migrates (the script runs on the importing
/// node after an `ASK`, the subscription stays on the migrating node until the slot is handed
/// over) or fails over, that can be a node the waiter is not subscribed on.
const CLUSTER_RELOOK: Duration = Duration::from_millis(250);

/// A [`Store`] on Redis 7.0 or later, one server or a Redis Cluster (feature `redis`):
/// exactly-once across every process and machine that shares it.
///
/// Build it with [`RedisStore::connect`] from a [`Config`](crate::Config) (or let
/// [`init`](crate::init) do it for `IDEM_STORE=redis://…`), with
/// [`RedisStore::connect_with`] from a URL and [`RedisOptions`], with [`RedisStore::open`] from
/// a URL alone, from the application's own client
/// ([`from_client`](RedisStore::from_client), [`from_cluster_client`](RedisStore::from_cluster_client)),
/// or on the application's own `deadpool_redis::Pool` (`from_deadpool`, feature
/// `deadpool-redis`):
///
/// ```no_run
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let store = idem::RedisStore::open("redis://127.0.0.1:6379/0").await?;
/// let cluster = idem::RedisStore::open("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").await?;
/// let outcome = idem::Call::new("billing::invoice", "inv-42")
///     .store(store.clone())
///     .run(async { 42_u64 })
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS (certificates are
/// checked against the system's roots, or the file named by `SSL_CERT_FILE`),
/// `redis+unix:///path/to/socket[?db=N]`, and for a Redis Cluster
/// `redis+cluster://[user:password@]host1:port1,host2:port2,…` (`rediss+cluster://…` with TLS),
/// naming any of its nodes: the others are discovered. Connections speak RESP3. To one server
/// the store keeps `pool_size` (default 1) multiplexed connections for commands, shared by all
/// its operations at once (a command never waits for a free connection: concurrent commands
/// are pipelined on them); to a Cluster, `pool_size` (default 16) Cluster connections, each
/// carrying one operation at a time; plus one for the pub/sub that wakes waiting calls. A
/// Cluster connection holds one connection per node, follows `MOVED`/`ASK` redirections and
/// failovers, and reconnects nodes by itself.
///
/// Records are plain strings (`GET key` in `redis-cli` shows the JSON envelope of a result)
/// with a Redis expiry: the lease while a call runs, the ttl once it completed. Each store
/// operation has a timeout (`command_timeout`; `connect_timeout` more when a connection has to
/// be made) and fails with [`StoreErrorKind::Timeout`] or [`StoreErrorKind::Unavailable`]
/// instead of hanging; broken connections are replaced by the next operations, so calls work
/// again as soon as Redis is back. An operation that finds its connection closed (the server
/// dropped an idle client, a firewall an idle socket) is sent once more on a new connection
/// instead of failing. A store made on one tokio runtime serves calls on any other, after the
/// first one has ended too: its connections are driven by the runtime of its calls while they
/// all come from one, and move to a few threads of idem's own once a call comes from another.
///
/// A server that can evict records (`maxmemory` with a policy other than `noeviction`) could
/// drop a claim or a result and let its call run again: `connect` refuses it unless
/// [`RedisOptions::allow_eviction`] accepts the risk.
///
/// Redis replicates asynchronously: a claim or a result that a master acknowledged but had not
/// yet sent to its replica is lost if the master fails and the replica takes over (the key is
/// then free, or back in progress, and can run again). With `min_replicas = n`
/// ([`RedisOptions::min_replicas`]) a claim and a completion are acknowledged only once `n` replicas
/// have them (`WAIT n replica_timeout`, sent in the same round trip as the write); when fewer
/// answer in time the claim is withdrawn and the call fails with
/// [`StoreErrorKind::Unavailable`] (the body does not run), and a result is reported as not
/// stored (the caller still gets it).
///
/// Cloning it is cheap and shares the connections.
///
/// [`StoreErrorKind::Timeout`]: crate::StoreErrorKind::Timeout
/// [`StoreErrorKind::Unavailable`]: crate::StoreErrorKind::Unavailable
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

impl RedisStore {
    /// `SET key claim NX PX lease GET`, and `PTTL key` in the same round trip when `expiry`.
    async fn claim_or_read(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
        expiry: bool,
    ) -> Result<Option<Record>, StoreError> {
        let mine = claim.encoded();
        let mut cmd = Cmd::with_capacity(7, key.len() + mine.len() + 32);
        cmd.arg("SET")
            .arg(key)
            .arg(&*mine)
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .arg("GET");
        let request = Query::command(cmd, key).replicated().with_expiry(expiry);
        let answer = self
            .shared
            .query(&request, Some((&mine[..], lease)))
            .await?;
        match self.shared.parse::<Option<Vec<u8>>>(answer.value)? {
            // Our own claim is found when the cluster client sent the SET again after the
            // first one was applied but its answer lost: the key is ours either way.
            Some(found) if *found != *mine => Ok(Some(match Record::from_bytes(found) {
                Record::Completed { payload, .. } => Record::Completed {
                    payload,
                    expires_in: answer
                        .expiry
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map(Duration::from_millis),
                },
                in_progress => in_progress,
            })),
            _ => match self.shared.replicated(answer.acked, "claim") {
                Ok(()) => Ok(None),
                Err(error) => {
                    // Not durable, so not ours to run on: free the key for a retry. Boxed
                    // (through `DynStore`): inline, the release's state would more than
                    // double every claim's future, for a path that almost never runs.
                    if let Err(undo) = DynStore::release(self, key, claim).await {
                        tracing::debug!(%undo, "idem could not withdraw an unreplicated claim; it ends with its lease");
                    }
                    Err(error)
                }
            },
        }
    }
}

impl Store for RedisStore {
    fn claim(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        self.claim_or_read(key, claim, lease, false)
    }

    /// The claim with `PTTL key` in the same round trip: a completed record comes with the
    /// lifetime it has left.
    fn claim_with_expiry(
        &self,
        key: &str,
        claim: &Claim,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        self.claim_or_read(key, claim, lease, true)
    }

    async fn complete(
        &self,
        key: &str,
        claim: &Claim,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<Fence, StoreError> {
        let ttl = millis(ttl).to_string();
        let request = Query::script(
            &self.shared.scripts.complete,
            key,
            &[&claim.encoded(), payload, ttl.as_bytes()],
        );
        let answer = self.shared.query(&request.replicated(), None).await?;
        match self.shared.fence(answer.value)? {
            Fence::Held => self
                .shared
                .replicated(answer.acked, "result")
                .map(|()| Fence::Held),
            Fence::Lost => Ok(Fence::Lost),
        }
    }

    async fn release(&self, key: &str, claim: &Claim) -> Result<Fence, StoreError> {
        let request = Query::script(&self.shared.scripts.release, key, &[&claim.encoded()]);
        self.shared.fenced(request).await
    }

    async fn renew(&self, key: &str, claim: &Claim, lease: Duration) -> Result<Fence, StoreError> {
        let lease = millis(lease).to_string();
        let request = Query::script(
            &self.shared.scripts.renew,
            key,
            &[&claim.encoded(), lease.as_bytes()],
        );
        self.shared.fenced(request).await
    }

    async fn wait(&self, key: &str, holder: &Claim, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let ticket = self.shared.hub.as_ref().map(|hub| hub.register(key));
        // Without a hub (an application's pool) nothing wakes the waiter but its timer.
        let unwoken = Notify::new();
        let woken = ticket.as_ref().map_or(&unwoken, |t| t.wake()).notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // Subscribe first, then look: a completion after the look is published to us.
        let listening = match (&self.shared.hub, &ticket) {
            (Some(hub), Some(ticket)) => match hub.listen(ticket).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(%error, "idem cannot subscribe for completions; waiting by polling");
                    false
                }
            },
            _ => false,
        };
        let Some(left) = self.shared.lease_left(key, holder).await? else {
            return Ok(());
        };
        // A holder that crashed sends nothing: its lease ending is the last wake-up.
        let mut until = deadline.min(Instant::now() + left + LEASE_GRACE);
        if !listening {
            until = until.min(Instant::now() + FALLBACK_POLL);
        }
        if self.shared.cluster {
            until = until.min(Instant::now() + CLUSTER_RELOOK);
        }
        let _ = tokio::time::timeout_at(until, woken).await;
        Ok(())
    }

    /// `GET key` and `PTTL key` in one round trip (on a Cluster, both to the key's master).
    /// The whole payload comes back: the fingerprint of a completed record is read from its
    /// envelope's head.
    async fn inspect(&self, key: &str) -> Result<Inspection, StoreError> {
        let mut get = Cmd::with_capacity(2, key.len() + 3);
        get.arg("GET").arg(key);
        let answer = self
            .shared
            .query(&Query::command(get, key).with_expiry(true), None)
            .await?;
        let Some(bytes) = self.shared.parse::<Option<Vec<u8>>>(answer.value)? else {
            return Ok(Inspection::Absent);
        };
        let left = answer
            .expiry
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis);
        Ok(Inspection::of_bytes(&bytes, left))
    }

    /// A script: `DEL key`, and `(S)PUBLISH` to wake the waiters when it deleted a record.
    async fn forget(&self, key: &str) -> Result<bool, StoreError> {
        let request = Query::script(&self.shared.scripts.forget, key, &[]);
        let answer = self.shared.query(&request, None).await?;
        Ok(self.shared.parse::<i64>(answer.value)? == 1)
    }

    /// `SCAN` on every master, a page at a time, never `KEYS`; see `stats.rs`.
    /// [`Stats::store_keys`] is `DBSIZE` (summed over the masters of a Cluster): every key of
    /// the database, idem's or not.
    fn stats(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Stats, StoreError>> + Send {
        self.count(prefix, limit)
    }

    /// `SET record issued NX PX ttl`, or within a bound one script; see `tokens.rs`.
    fn issue_token(
        &self,
        token: &TokenKey,
        ttl: Duration,
        max_live: Option<u32>,
    ) -> impl Future<Output = Result<Issue, StoreError>> + Send {
        self.issue(token, ttl, max_live)
    }

    /// One script answers all three cases; see `tokens.rs`.
    fn redeem_token(
        &self,
        token: &TokenKey,
        keep: Duration,
    ) -> impl Future<Output = Result<Redemption, StoreError>> + Send {
        self.redeem(token, keep)
    }

    fn describe(&self) -> String {
        self.shared.url.clone()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shared.url)
            .field("cluster", &self.shared.cluster)
            .field("pool_size", &self.shared.pool_size)
            .field("command_timeout", &self.shared.command_timeout)
            .field("min_replicas", &self.shared.replicas.map_or(0, |r| r.count))
            .finish()
    }
}
