//! [`RedisStore`]: the store shared by processes and machines, on Redis 7.0 or later, one
//! server or a Redis Cluster.
//!
//! Every operation touches one key, so each is atomic and single-slot (no `CROSSSLOT` on a
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
//!
//! So a replay costs one round trip and a first call two. With `min_replicas`, claim and
//! complete send `WAIT` in the same round trip, right behind their write. Commands go over a
//! few connections (see `links.rs`): shared and pipelined to one server, one operation at a
//! time per Cluster connection (see `servers.rs`); scripts run by SHA and are loaded again
//! where a server lacks them (see `scripts.rs`); waiters are woken by pub/sub (see
//! `waiters.rs`). Connections are made and driven on the runtime the calls come from, or on
//! idem's own once they come from more than one (see `background.rs`). `connect` checks the servers before the first
//! call, eviction included (see `checks.rs`).

mod background;
mod checks;
mod failure;
mod links;
mod options;
mod scripts;
mod servers;
mod waiters;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, ServerErrorKind, Value};
use tokio::time::Instant;

use crate::error::{Error, StoreError};
use crate::record::{Claim, Record};
use crate::store::{Fence, Inspection, Store, StoreFuture};

use self::background::Home;
pub use self::options::RedisOptions;

use self::links::{Lent, Links};
use self::scripts::{Lua, Scripts};
use self::servers::{Conn, Target, Timeouts};
use self::waiters::Hub;

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
/// Build it with [`RedisStore::connect`] from [`RedisOptions`], a URL or a
/// [`Config`](crate::Config) (or let [`init`](crate::init) do it for `IDEM_STORE=redis://…`),
/// with [`RedisStore::open`] from a URL, or from the application's own client
/// ([`from_client`](RedisStore::from_client), [`from_cluster_client`](RedisStore::from_cluster_client)):
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

struct Shared {
    links: Links,
    hub: Arc<Hub>,
    scripts: &'static Scripts,
    cluster: bool,
    url: String,
    pool_size: usize,
    command_timeout: Duration,
    replicas: Option<Replicas>,
}

/// How many replicas must acknowledge a claim or a result (`min_replicas`) and how long a
/// write waits for them (`replica_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replicas {
    count: usize,
    timeout: Duration,
}

impl RedisStore {
    /// Connects to the Redis (or Redis Cluster) named by `options` and checks that it answers.
    /// `options` is a [`RedisOptions`], a URL, or the application's [`Config`](crate::Config)
    /// (`&config`), which names the store and its settings.
    ///
    /// Fails with [`Error::Config`] for a URL that does not parse or names no Redis, for
    /// credentials the server refuses, for a server older than Redis 7.0, for a URL of the
    /// wrong kind (`redis://` naming a Cluster node, `redis+cluster://` naming a server that is
    /// not in a Cluster), and for a server that may evict records unless
    /// [`allow_eviction`](RedisOptions::allow_eviction) accepts it; with [`Error::Connect`] when
    /// the server cannot be reached or does not answer within `connect_timeout`.
    pub async fn connect(options: impl Into<RedisOptions>) -> Result<RedisStore, Error> {
        let options = options.into();
        let target = Target::parse(&options.url)?;
        RedisStore::start(target, &options).await
    }

    /// Connects to the Redis at `url` with the default options; see
    /// [`connect`](RedisStore::connect).
    pub async fn open(url: &str) -> Result<RedisStore, Error> {
        RedisStore::connect(url).await
    }

    /// A store on the server an application's own `redis::Client` names, with its address,
    /// credentials and TLS settings; `options` gives the rest (its URL is not used). The store
    /// makes its own connections from it, speaking RESP3 (for the pushes that wake waiting
    /// calls).
    pub async fn from_client(
        client: &redis::Client,
        options: RedisOptions,
    ) -> Result<RedisStore, Error> {
        let target = Target::from_client(client)?;
        RedisStore::start(target, &options).await
    }

    /// A store on the Redis Cluster an application's own `ClusterClient` reaches; `options`
    /// gives the rest (its URL is not used). Waiting calls are woken by sharded pub/sub when
    /// the client speaks RESP3 (`ClusterClientBuilder::use_protocol`), and look again every
    /// 50 ms otherwise. The client's own retry settings apply.
    pub async fn from_cluster_client(
        client: redis::cluster::ClusterClient,
        options: RedisOptions,
    ) -> Result<RedisStore, Error> {
        let target = Target::from_cluster_client(client);
        RedisStore::start(target, &options).await
    }

    async fn start(target: Target, options: &RedisOptions) -> Result<RedisStore, Error> {
        if target.tls {
            tls_ready(&target.url)?;
        }
        let replicas = (options.min_replicas > 0).then_some(Replicas {
            count: options.min_replicas,
            timeout: options.replica_timeout,
        });
        let timeouts = Timeouts {
            connect: options.connect_timeout,
            attempt: options.command_timeout + replicas.map_or(Duration::ZERO, |r| r.timeout),
        };
        let url = target.url;
        let servers = Arc::new(target.servers);
        let cluster = servers.is_cluster();
        let pool_size = options
            .pool_size
            .unwrap_or(if cluster { CLUSTER_POOL } else { NODE_POOL });
        let home = Arc::new(Home::default());
        let links = Links::new(servers.clone(), home.clone(), timeouts, pool_size, cluster);
        let store = RedisStore {
            shared: Arc::new(Shared {
                links,
                hub: Arc::new(Hub::new(servers, home, timeouts, options.command_timeout)),
                scripts: if cluster {
                    &scripts::CLUSTER
                } else {
                    &scripts::NODE
                },
                cluster,
                url,
                pool_size,
                command_timeout: options.command_timeout,
                replicas,
            }),
        };
        store
            .check(options.connect_timeout, options.allow_eviction)
            .await?;
        Ok(store)
    }

    /// Runs `request` on one of the shared connections within the command timeout; with
    /// `request.replicated` and `min_replicas` set, `WAIT` follows in the same round trip (and
    /// the timeout grows by `replica_timeout`).
    ///
    /// When the connection to one server turns out to be closed (see [`failure::resend`]: the
    /// server dropped it while idle, or it broke before the answer came), the connection is
    /// replaced and the request sent once more, which every operation of the store allows (it
    /// then has `within` again, after the new connection is made). A Cluster connection does the
    /// same by itself: it reconnects the node and sends again.
    ///
    /// When the request times out, `undo` (the claim bytes of a `SET`, and its lease) is
    /// released right after it on the same connection, so that the server runs the release
    /// after the request if the request still arrives.
    async fn query(
        &self,
        request: Request<'_>,
        undo: Option<(&[u8], Duration)>,
    ) -> Result<Answer, StoreError> {
        let shared = &self.shared;
        let replicas = shared.replicas.filter(|_| request.replicated);
        let within = shared.command_timeout + replicas.map_or(Duration::ZERO, |r| r.timeout);
        let mut resent = None;
        loop {
            let lent = match resent {
                None => shared.links.get().await,
                Some(place) => shared.links.again(place).await,
            };
            // `_held` (not `_`): a Cluster connection stays this operation's until it returns.
            let Lent {
                mut link,
                held: _held,
                place,
            } = lent.map_err(|e| failure::unlinked(e, &shared.url))?;
            match tokio::time::timeout(within, send(&mut link.conn, &request, replicas)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => {
                    if failure::breaks_connection(&error) {
                        link.discard();
                    }
                    if resent.is_none() && link.is_node() && failure::resend(&error) {
                        tracing::debug!(%error, "idem found its Redis connection closed; sending the command again on a new one");
                        resent = Some(place);
                        continue;
                    }
                    return Err(failure::command(error, &shared.url));
                }
                Err(_) => {
                    // The server may be gone without a word (a dead peer sends no reset): the
                    // next operation on this connection's place makes a new one.
                    link.discard();
                    if let Some((claim, lease)) = undo {
                        let undo = Undo {
                            key: request.key.to_owned(),
                            claim: claim.to_vec(),
                            scripts: shared.scripts,
                            within: lease,
                        };
                        undo.send(link.conn.clone());
                    }
                    return Err(failure::timed_out(&shared.url, within));
                }
            }
        }
    }

    /// Runs a fenced script: 1 is [`Fence::Held`].
    async fn fenced(&self, request: Request<'_>) -> Result<Fence, StoreError> {
        let answer = self.query(request, None).await?;
        self.fence(answer.value)
    }

    fn fence(&self, answer: Value) -> Result<Fence, StoreError> {
        match self.parse::<i64>(answer)? {
            1 => Ok(Fence::Held),
            _ => Ok(Fence::Lost),
        }
    }

    fn parse<T: FromRedisValue>(&self, answer: Value) -> Result<T, StoreError> {
        T::from_redis_value(answer).map_err(|e| failure::command(e.into(), &self.shared.url))
    }

    /// Checks that `min_replicas` replicas acknowledged a write.
    fn replicated(&self, acked: Option<i64>, what: &str) -> Result<(), StoreError> {
        match (self.shared.replicas, acked) {
            (Some(replicas), Some(acked)) if acked < replicas.count as i64 => {
                Err(failure::not_replicated(
                    &self.shared.url,
                    what,
                    acked,
                    replicas.count,
                    replicas.timeout,
                ))
            }
            _ => Ok(()),
        }
    }

    /// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
    async fn lease_left(&self, key: &str, holder: &Claim) -> Result<Option<Duration>, StoreError> {
        let request = Request::script(&self.shared.scripts.peek, key, &[&holder.encoded()]);
        let answer = self.query(request, None).await?;
        let left: i64 = self.parse(answer.value)?;
        Ok(u64::try_from(left).ok().map(Duration::from_millis))
    }
}

/// What [`RedisStore::query`] sends: a command on one key; for a script, the script to load
/// where the server answers `NOSCRIPT`; and what follows the command in the same round trip.
struct Request<'a> {
    cmd: Cmd,
    key: &'a str,
    script: Option<&'static Lua>,
    /// `WAIT` for `min_replicas` follows (when it is set).
    replicated: bool,
    /// `PTTL key` follows: the lifetime left to the record the command found.
    expiry: bool,
}

impl<'a> Request<'a> {
    fn command(cmd: Cmd, key: &'a str) -> Self {
        Request {
            cmd,
            key,
            script: None,
            replicated: false,
            expiry: false,
        }
    }

    /// `EVALSHA sha 1 key args…`.
    fn script(lua: &'static Lua, key: &'a str, args: &[&[u8]]) -> Self {
        let data = args.iter().map(|arg| arg.len()).sum::<usize>() + key.len() + 64;
        // Room made up front: a command grown from empty reallocates on nearly every word.
        let mut cmd = Cmd::with_capacity(args.len() + 4, data);
        cmd.arg("EVALSHA").arg(lua.sha()).arg(1).arg(key);
        for arg in args {
            cmd.arg(*arg);
        }
        Request {
            script: Some(lua),
            ..Request::command(cmd, key)
        }
    }

    fn replicated(self) -> Self {
        Request {
            replicated: true,
            ..self
        }
    }

    fn with_expiry(self, expiry: bool) -> Self {
        Request { expiry, ..self }
    }
}

/// The answers to a [`Request`].
struct Answer {
    /// The command's.
    value: Value,
    /// `PTTL`'s, when asked: milliseconds, or negative when the key has no expiry or is gone.
    expiry: Option<i64>,
    /// `WAIT`'s, when sent: how many replicas acknowledged.
    acked: Option<i64>,
}

/// Sends `request`, followed by `PTTL` when it asks for the expiry and by `WAIT` when
/// `replicas` is set (one round trip: on a Cluster they all go to the master of the request's
/// key, and a redirection resends them whole), and sends it again once if the server lacks
/// the script.
///
/// On one server the script is loaded (`SCRIPT LOAD`) and `EVALSHA` sent again. On a Cluster
/// the script is sent whole (`EVAL`, which also caches it): while a failover or a migration is
/// under way the client's map of the slots can be behind, so a separate `SCRIPT LOAD` could
/// reach another node than the one that finally runs the script.
async fn send(
    conn: &mut Conn,
    request: &Request<'_>,
    replicas: Option<Replicas>,
) -> RedisResult<Answer> {
    let mut eval = None;
    let mut loaded = false;
    loop {
        let cmd = eval.as_ref().unwrap_or(&request.cmd);
        let (answer, expiry, acked) = if replicas.is_none() && !request.expiry {
            (conn.req_packed_command(cmd).await?, None, None)
        } else {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd.clone());
            if request.expiry {
                pipe.cmd("PTTL").arg(request.key);
            }
            if let Some(replicas) = replicas {
                pipe.cmd("WAIT")
                    .arg(replicas.count)
                    .arg(millis(replicas.timeout));
            }
            let sent = 1 + usize::from(request.expiry) + usize::from(replicas.is_some());
            let mut answers = conn.req_packed_commands(&pipe, 0, sent).await?.into_iter();
            let answer = answers.next().unwrap_or(Value::Nil);
            let expiry = if request.expiry { answers.next() } else { None };
            (answer, expiry, answers.next())
        };
        match (answer.extract_error(), request.script) {
            (Err(error), Some(lua))
                if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) && !loaded =>
            {
                loaded = true;
                if let Conn::Cluster(_) = conn {
                    eval = Some(evaluate(lua, &request.cmd));
                } else {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(lua.source);
                    // Boxed: loading a script is rare, and its future would otherwise be
                    // part of every command's.
                    Box::pin(conn.on_master_of(request.key, load))
                        .await?
                        .extract_error()?;
                }
            }
            (Err(error), _) => return Err(error),
            (Ok(value), _) => {
                let number = |answer: Option<Value>| -> RedisResult<Option<i64>> {
                    match answer {
                        Some(answer) => Ok(Some(i64::from_redis_value(answer.extract_error()?)?)),
                        None => Ok(None),
                    }
                };
                return Ok(Answer {
                    value,
                    expiry: number(expiry)?,
                    acked: number(acked)?,
                });
            }
        }
    }
}

/// `EVAL source …` with the keys and arguments of `EVALSHA sha …`.
fn evaluate(lua: &Lua, evalsha: &Cmd) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(lua.source);
    for arg in evalsha.args_iter().skip(2) {
        if let redis::Arg::Simple(bytes) = arg {
            cmd.arg(bytes);
        }
    }
    cmd
}

/// Releases a claim whose `SET` timed out: the server may still apply the `SET` (a paused or
/// frozen server answers late), and the caller has already given up on it. Sent on the
/// connection of the `SET`, so it runs after it; fenced by the claim, so it deletes nothing
/// else.
struct Undo {
    key: String,
    claim: Vec<u8>,
    scripts: &'static Scripts,
    /// How long the undo is worth trying: the claim ends with its lease anyway.
    within: Duration,
}

impl Undo {
    /// Sends the release in the background, on idem's own runtime: the caller's may end first.
    fn send(self, mut conn: Conn) {
        background::spawn(false, async move {
            let request = Request::script(&self.scripts.release, &self.key, &[&self.claim]);
            let undone = tokio::time::timeout(self.within, send(&mut conn, &request, None)).await;
            let undone = undone.map(|answer| answer.map(|answer| answer.value));
            tracing::debug!(?undone, "idem released a claim whose SET timed out");
        });
    }
}

/// Whole milliseconds, at least one: Redis expiries are in milliseconds and never zero.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
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
        let request = Request::command(cmd, key).replicated().with_expiry(expiry);
        let answer = self.query(request, Some((&mine[..], lease))).await?;
        match self.parse::<Option<Vec<u8>>>(answer.value)? {
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
            _ => match self.replicated(answer.acked, "claim") {
                Ok(()) => Ok(None),
                Err(error) => {
                    // Not durable, so not ours to run on: free the key for a retry.
                    if let Err(undo) = self.release(key, claim).await {
                        tracing::debug!(%undo, "idem could not withdraw an unreplicated claim; it ends with its lease");
                    }
                    Err(error)
                }
            },
        }
    }
}

impl Store for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        Box::pin(self.claim_or_read(key, claim, lease, false))
    }

    /// The claim with `PTTL key` in the same round trip: a completed record comes with the
    /// lifetime it has left.
    fn claim_with_expiry<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        Box::pin(self.claim_or_read(key, claim, lease, true))
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        payload: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Fence> {
        Box::pin(async move {
            let ttl = millis(ttl).to_string();
            let request = Request::script(
                &self.shared.scripts.complete,
                key,
                &[&claim.encoded(), payload, ttl.as_bytes()],
            );
            let answer = self.query(request.replicated(), None).await?;
            match self.fence(answer.value)? {
                Fence::Held => self
                    .replicated(answer.acked, "result")
                    .map(|()| Fence::Held),
                Fence::Lost => Ok(Fence::Lost),
            }
        })
    }

    fn release<'a>(&'a self, key: &'a str, claim: &'a Claim) -> StoreFuture<'a, Fence> {
        Box::pin(async move {
            let request = Request::script(&self.shared.scripts.release, key, &[&claim.encoded()]);
            self.fenced(request).await
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Fence> {
        Box::pin(async move {
            let lease = millis(lease).to_string();
            let request = Request::script(
                &self.shared.scripts.renew,
                key,
                &[&claim.encoded(), lease.as_bytes()],
            );
            self.fenced(request).await
        })
    }

    fn wait<'a>(
        &'a self,
        key: &'a str,
        holder: &'a Claim,
        timeout: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let hub = &self.shared.hub;
            let ticket = hub.register(key);
            let woken = ticket.wake().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // Subscribe first, then look: a completion after the look is published to us.
            let listening = match hub.listen(&ticket).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(%error, "idem cannot subscribe for completions; waiting by polling");
                    false
                }
            };
            let Some(left) = self.lease_left(key, holder).await? else {
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
        })
    }

    /// `GET key` and `PTTL key` in one round trip (on a Cluster, both to the key's master).
    /// The whole payload comes back: the fingerprint of a completed record is read from its
    /// envelope's head.
    fn inspect<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Inspection> {
        Box::pin(async move {
            let mut get = Cmd::with_capacity(2, key.len() + 3);
            get.arg("GET").arg(key);
            let answer = self
                .query(Request::command(get, key).with_expiry(true), None)
                .await?;
            let Some(bytes) = self.parse::<Option<Vec<u8>>>(answer.value)? else {
                return Ok(Inspection::Absent);
            };
            let left = answer
                .expiry
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis);
            Ok(Inspection::of_bytes(&bytes, left))
        })
    }

    /// A script: `DEL key`, and `(S)PUBLISH` to wake the waiters when it deleted a record.
    fn forget<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let request = Request::script(&self.shared.scripts.forget, key, &[]);
            let answer = self.query(request, None).await?;
            Ok(self.parse::<i64>(answer.value)? == 1)
        })
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

/// redis-rs builds its TLS configuration on the process-wide rustls provider: install ring
/// unless the application chose one.
#[cfg(feature = "redis-tls")]
fn tls_ready(_url: &str) -> Result<(), Error> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; either way there is one afterwards.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Ok(())
}

#[cfg(not(feature = "redis-tls"))]
fn tls_ready(url: &str) -> Result<(), Error> {
    Err(servers::needs_tls(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_whole_positive_milliseconds() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
    }

    #[test]
    fn a_script_missing_on_a_node_is_sent_whole_with_the_same_keys_and_arguments() {
        let lua = &scripts::CLUSTER.renew;
        let request = Request::script(lua, "idem:s:k", &[b"claim", b"30000"]);
        let eval = evaluate(lua, &request.cmd);
        let words: Vec<Vec<u8>> = eval
            .args_iter()
            .filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
                _ => None,
            })
            .collect();
        let expected: Vec<&[u8]> = vec![
            b"EVAL",
            lua.source.as_bytes(),
            b"1",
            b"idem:s:k",
            b"claim",
            b"30000",
        ];
        assert_eq!(words, expected);
    }
}
