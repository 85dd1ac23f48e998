//! [`RedisStore`]: the store shared by processes and machines, on Redis 7.0 or later.
//!
//! Every operation touches one key, so each is atomic and single-slot (Redis Cluster ready):
//!
//! | operation | Redis | round trips |
//! |---|---|---|
//! | claim (or read the record) | `SET key claim NX PX lease GET` | 1 |
//! | complete | script: compare with the claim, `SET payload PX ttl`, `PUBLISH` | 1 |
//! | release | script: compare with the claim, `DEL`, `PUBLISH` | 1 |
//! | renew | script: compare with the claim, `PEXPIRE` | 1 |
//! | wait | `SUBSCRIBE` (once per key and process), script: compare and `PTTL` | 2 |
//!
//! So a replay costs one round trip and a first call two. Connections come from a pool that
//! checks them without a round trip (see `links.rs`), scripts run by SHA and reload themselves
//! after `SCRIPT FLUSH` or a restart (see `scripts.rs`), and waiters are woken by pub/sub (see
//! `waiters.rs`).

mod failure;
mod links;
mod scripts;
mod waiters;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::QueueMode;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, FromRedisValue,
    IntoConnectionInfo, ProtocolVersion,
};
use tokio::time::Instant;

use crate::config::{Config, StoreKind, store_kind};
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::record::{Claim, Record};
use crate::store::{Fence, Store, StoreFuture};

use self::links::{Links, Pool};
use self::scripts::{SCRIPTS, SOURCES};
use self::waiters::Hub;

/// How long after the holder's lease ends a waiter looks again, for Redis to have expired it.
const LEASE_GRACE: Duration = Duration::from_millis(2);

/// How long a waiter sleeps between looks when pub/sub is unavailable.
const FALLBACK_POLL: Duration = Duration::from_millis(50);

/// A [`Store`] on Redis 7.0 or later: exactly-once across every process and machine that
/// shares the server.
///
/// Build it with [`RedisStore::connect`] from a [`Config`] (or let [`init`](crate::init) do it
/// for `IDEM_STORE=redis://…`), or with [`RedisStore::open`] from a URL:
///
/// ```no_run
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idem::Error> {
/// let store = idem::RedisStore::open("redis://127.0.0.1:6379/0").await?;
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
/// `redis+unix:///path/to/socket[?db=N]`. Connections speak RESP3. The store keeps up to
/// `pool_size` connections for commands, plus one for the pub/sub that wakes waiting calls.
///
/// Records are plain strings (`GET key` in `redis-cli` shows the JSON envelope of a result)
/// with a Redis expiry: the lease while a call runs, the ttl once it completed. Each store
/// operation has a timeout (`command_timeout`; `connect_timeout` more when a connection has to
/// be made) and fails with [`StoreErrorKind::Timeout`] or [`StoreErrorKind::Unavailable`]
/// instead of hanging; broken connections are replaced by the next operations, so calls work
/// again as soon as Redis is back.
///
/// Cloning it is cheap and shares the connections.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    hub: Arc<Hub>,
    url: String,
    pool_size: usize,
    command_timeout: Duration,
}

impl RedisStore {
    /// Connects to the Redis named by `config.store` with the pool size and timeouts of
    /// `config`, and checks that it answers.
    ///
    /// Fails with [`Error::Config`] for a URL that does not parse or names no Redis, for
    /// credentials the server refuses, and for a server older than Redis 7.0; with
    /// [`Error::Connect`] when the server cannot be reached or does not answer within
    /// `connect_timeout`.
    pub async fn connect(config: &Config) -> Result<RedisStore, Error> {
        let info = parse_url(&config.store)?;
        let url = describe(&info);
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            install_crypto_provider();
        }
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))
            .map_err(|e| Error::Config(format!("store `{url}`: {e}")))?;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(None);
        let pool = Pool::builder(Links::new(client.clone(), connection.clone()))
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.command_timeout))
            .create_timeout(Some(config.connect_timeout))
            .queue_mode(QueueMode::Lifo)
            .build()
            .map_err(|e| Error::Config(format!("store `{url}`: {e}")))?;
        let store = RedisStore {
            shared: Arc::new(Shared {
                pool,
                hub: Arc::new(Hub::new(client, connection, config.command_timeout)),
                url,
                pool_size: config.pool_size,
                command_timeout: config.command_timeout,
            }),
        };
        store.check(config.connect_timeout).await?;
        Ok(store)
    }

    /// Connects to the Redis at `url` with the default pool size and timeouts; see
    /// [`connect`](RedisStore::connect).
    pub async fn open(url: &str) -> Result<RedisStore, Error> {
        RedisStore::connect(&Config::default().store(url)).await
    }

    /// Checks that the server answers, runs Redis 7.0 or later, and has the scripts loaded:
    /// one pipelined round trip on a new connection.
    async fn check(&self, connect_timeout: Duration) -> Result<(), Error> {
        let url = &self.shared.url;
        let unreachable = |source: StoreError| Error::Connect {
            store: url.clone(),
            source,
        };
        let answer = tokio::time::timeout(connect_timeout, async {
            let mut link = self.shared.pool.get().await.map_err(Checked::Pool)?;
            let mut pipe = redis::pipe();
            pipe.cmd("INFO").arg("server");
            for source in SOURCES {
                pipe.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
            }
            let (info,): (String,) = pipe
                .query_async(&mut link.conn)
                .await
                .map_err(Checked::Command)?;
            Ok::<String, Checked>(info)
        })
        .await;
        let info = match answer {
            Ok(Ok(info)) => info,
            Err(_) => {
                return Err(unreachable(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "Redis at {url} did not answer within {connect_timeout:?} (connect_timeout)"
                    ),
                )));
            }
            Ok(Err(Checked::Pool(deadpool::managed::PoolError::Backend(e))))
            | Ok(Err(Checked::Command(e)))
                if failure::is_auth(&e) =>
            {
                return Err(Error::Config(format!(
                    "Redis at {url} refused the credentials ({e}); check the user and password in the store URL"
                )));
            }
            Ok(Err(Checked::Pool(e))) => {
                return Err(unreachable(failure::checkout(
                    e,
                    url,
                    self.shared.pool_size,
                )));
            }
            Ok(Err(Checked::Command(e))) => return Err(unreachable(failure::command(e, url))),
        };
        match server_version(&info) {
            Some((major, _)) if major >= 7 => Ok(()),
            Some((major, minor)) => Err(Error::Config(format!(
                "Redis at {url} runs version {major}.{minor}; RedisStore needs Redis 7.0 or later (SET … NX GET)"
            ))),
            None => Err(Error::Config(format!(
                "Redis at {url} does not report its version; RedisStore needs Redis 7.0 or later"
            ))),
        }
    }

    /// Runs one request on a pooled connection, within the command timeout.
    async fn query<T: FromRedisValue>(&self, request: Request<'_>) -> Result<T, StoreError> {
        self.query_or_undo(request, None).await
    }

    /// Like [`query`](RedisStore::query); when the request times out, `undo` is sent after it
    /// on the same connection, so that the server runs it after the request if the request
    /// still arrives.
    async fn query_or_undo<T: FromRedisValue>(
        &self,
        request: Request<'_>,
        undo: Option<Undo>,
    ) -> Result<T, StoreError> {
        let shared = &self.shared;
        let mut link = shared
            .pool
            .get()
            .await
            .map_err(|e| failure::checkout(e, &shared.url, shared.pool_size))?;
        let sent = match &request {
            Request::Command(cmd) => {
                tokio::time::timeout(shared.command_timeout, cmd.query_async(&mut link.conn)).await
            }
            Request::Script(invocation) => {
                tokio::time::timeout(
                    shared.command_timeout,
                    invocation.invoke_async(&mut link.conn),
                )
                .await
            }
        };
        match sent {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if failure::breaks_connection(&error) {
                    link.discard();
                }
                Err(failure::command(error, &shared.url))
            }
            Err(_) => {
                // The answer may still come; a connection in that state is not reused.
                link.discard();
                if let Some(undo) = undo {
                    undo.send(link.conn.clone());
                }
                Err(failure::timed_out(&shared.url, shared.command_timeout))
            }
        }
    }

    async fn fenced(&self, request: Request<'_>) -> Result<Fence, StoreError> {
        match self.query::<i64>(request).await? {
            1 => Ok(Fence::Held),
            _ => Ok(Fence::Lost),
        }
    }

    /// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
    async fn lease_left(&self, key: &str, holder: &Claim) -> Result<Option<Duration>, StoreError> {
        let mut invocation = SCRIPTS.peek.prepare_invoke();
        invocation.key(key).arg(holder.to_bytes());
        let left: i64 = self.query(Request::Script(invocation)).await?;
        Ok(u64::try_from(left).ok().map(Duration::from_millis))
    }
}

/// What [`RedisStore::query`] sends.
enum Request<'a> {
    Command(redis::Cmd),
    Script(redis::ScriptInvocation<'a>),
}

/// Releases a claim whose `SET` timed out: the server may still apply the `SET` (a paused or
/// frozen server answers late), and the caller has already given up on it. Sent on the
/// connection of the `SET`, so it runs after it; fenced by the claim, so it deletes nothing
/// else.
struct Undo {
    key: String,
    claim: Vec<u8>,
    /// How long the undo is worth trying: the claim ends with its lease anyway.
    within: Duration,
}

impl Undo {
    fn send(self, mut conn: redis::aio::MultiplexedConnection) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut invocation = SCRIPTS.release.prepare_invoke();
            invocation.key(&self.key).arg(&self.claim);
            let undone =
                tokio::time::timeout(self.within, invocation.invoke_async::<i64>(&mut conn)).await;
            tracing::debug!(?undone, "idem released a claim whose SET timed out");
        });
    }
}

/// Why the start-up check failed.
enum Checked {
    Pool(deadpool::managed::PoolError<redis::RedisError>),
    Command(redis::RedisError),
}

/// Whole milliseconds, at least one: Redis expiries are in milliseconds and never zero.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Store for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Record>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key)
                .arg(claim.to_bytes())
                .arg("NX")
                .arg("PX")
                .arg(millis(lease))
                .arg("GET");
            let undo = Undo {
                key: key.to_owned(),
                claim: claim.to_bytes(),
                within: lease,
            };
            let found: Option<Vec<u8>> = self
                .query_or_undo(Request::Command(cmd), Some(undo))
                .await?;
            Ok(found.map(Record::from_bytes))
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        payload: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Fence> {
        Box::pin(async move {
            let mut invocation = SCRIPTS.complete.prepare_invoke();
            invocation
                .key(key)
                .arg(claim.to_bytes())
                .arg(payload)
                .arg(millis(ttl));
            self.fenced(Request::Script(invocation)).await
        })
    }

    fn release<'a>(&'a self, key: &'a str, claim: &'a Claim) -> StoreFuture<'a, Fence> {
        Box::pin(async move {
            let mut invocation = SCRIPTS.release.prepare_invoke();
            invocation.key(key).arg(claim.to_bytes());
            self.fenced(Request::Script(invocation)).await
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a Claim,
        lease: Duration,
    ) -> StoreFuture<'a, Fence> {
        Box::pin(async move {
            let mut invocation = SCRIPTS.renew.prepare_invoke();
            invocation.key(key).arg(claim.to_bytes()).arg(millis(lease));
            self.fenced(Request::Script(invocation)).await
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
            let _ = tokio::time::timeout_at(until, woken).await;
            Ok(())
        })
    }

    fn describe(&self) -> String {
        self.shared.url.clone()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.shared.pool.status();
        f.debug_struct("RedisStore")
            .field("url", &self.shared.url)
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .field("command_timeout", &self.shared.command_timeout)
            .finish()
    }
}

/// Parses a store URL naming one Redis server.
fn parse_url(url: &str) -> Result<ConnectionInfo, Error> {
    match store_kind(url) {
        Some(StoreKind::Redis) => {}
        Some(StoreKind::RedisCluster) => {
            return Err(Error::Config(format!(
                "store `{}`: Redis Cluster is not supported by RedisStore yet; name one server with redis://host:port/db",
                redact(url)
            )));
        }
        _ => {
            return Err(Error::Config(format!(
                "store `{}` is not a Redis URL; expected redis://host:port/db, rediss://host:port/db or redis+unix:///path",
                redact(url)
            )));
        }
    }
    url.into_connection_info().map_err(|e| {
        Error::Config(format!(
            "store `{}` is not a valid Redis URL ({e}); expected redis://[user:password@]host[:port][/db]",
            redact(url)
        ))
    })
}

/// The URL of a connection without its password.
fn describe(info: &ConnectionInfo) -> String {
    let settings = info.redis_settings();
    let user = settings
        .username()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = settings.db();
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("redis://{user}{}:{port}/{db}", bracket(host)),
        ConnectionAddr::TcpTls { host, port, .. } => {
            format!("rediss://{user}{}:{port}/{db}", bracket(host))
        }
        ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
        other => format!("redis://{user}{other}/{db}"),
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// A URL that may not parse, with anything between `://` and `@` dropped but the user.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// `(major, minor)` of the `redis_version` line of `INFO server`.
fn server_version(info: &str) -> Option<(u32, u32)> {
    let version = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// redis-rs builds its TLS configuration on the process-wide rustls provider: install ring
/// unless the application chose one.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; either way there is one afterwards.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_leave_out_the_password() {
        for (url, described) in [
            ("redis://127.0.0.1:7000/2", "redis://127.0.0.1:7000/2"),
            ("redis://:secret@localhost:7000", "redis://localhost:7000/0"),
            ("redis://app:secret@localhost/3", "app@localhost:6379/3"),
            (
                "rediss://app:secret@cache.internal:6380/0",
                "rediss://app@cache.internal:6380/0",
            ),
            (
                "redis+unix:///run/redis.sock",
                "redis+unix:///run/redis.sock?db=0",
            ),
        ] {
            let text = describe(&parse_url(url).unwrap());
            assert!(text.ends_with(described), "{url} → {text}");
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for url in [
            "redis://:secret@host:notaport/0",
            "redis+cluster://a:secret@h1:7000,h2:7001",
            "http://user:secret@host",
        ] {
            match parse_url(url) {
                Err(Error::Config(message)) => assert!(!message.contains("secret"), "{message}"),
                other => panic!("{url}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn versions_are_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(server_version(info), Some((7, 0)));
        assert_eq!(server_version("redis_version:6.2.14\r\n"), Some((6, 2)));
        assert_eq!(server_version("# Server\r\n"), None);
    }

    #[test]
    fn expiries_are_whole_positive_milliseconds() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
    }
}
