//! Which Redis a store talks to, one server or a Cluster, read from the store URL; and the
//! connection that carries commands to either.
//!
//! `redis://`, `rediss://` and `redis+unix://` name one server: commands go over a
//! [`MultiplexedConnection`]. `redis+cluster://h1:p1,h2:p2,…` and `rediss+cluster://…` name the
//! seed nodes of a Redis Cluster: commands go over redis-rs's [`ClusterConnection`], which
//! learns the slot map from the seeds, keeps one multiplexed connection per node, routes each
//! command to the master of its key's slot, follows `MOVED` and `ASK` redirections (a pipeline
//! is resent whole to the redirected node) and repairs node connections by itself.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
#[cfg(feature = "redis-cluster")]
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
#[cfg(feature = "redis-cluster")]
use redis::cluster_async::ClusterConnection;
#[cfg(feature = "redis-cluster")]
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion,
    RedisFuture, RedisResult, Value,
};

use crate::error::Error;

use super::runtimes::{ConnectRuntime, DrivenBy};

/// The servers of a store.
pub(super) enum Servers {
    /// One Redis server.
    Node(Box<Client>),
    /// A Redis Cluster, reached through its seed nodes.
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<ClusterClient>),
}

/// What a store URL names, ready to connect.
pub(super) struct Target {
    pub(super) servers: Servers,
    /// The URL without the password, for messages.
    pub(super) url: String,
    /// Whether the connections use TLS.
    pub(super) tls: bool,
}

/// How long the cluster client waits before it retries a command that met a cluster in
/// transition (a slot without a reachable master, `TRYAGAIN`, `CLUSTERDOWN`): 10 ms, doubling,
/// at most 200 ms. Redirections (`MOVED`, `ASK`) are followed at once. The store's own
/// `command_timeout` bounds the whole.
#[cfg(feature = "redis-cluster")]
const RETRY_MIN_WAIT_MS: u64 = 10;
#[cfg(feature = "redis-cluster")]
const RETRY_MAX_WAIT_MS: u64 = 200;
#[cfg(feature = "redis-cluster")]
const RETRIES: u32 = 32;

impl Target {
    /// The server an application's client names, spoken to in RESP3.
    pub(super) fn from_client(client: &Client) -> Result<Target, Error> {
        let info = client.get_connection_info().clone();
        let described = describe(&info);
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))
            .map_err(|e| Error::Config(format!("store `{described}`: {e}")))?;
        Ok(Target {
            servers: Servers::Node(Box::new(client)),
            url: described,
            tls,
        })
    }

    /// The Cluster an application's client reaches, as that client is set up.
    #[cfg(feature = "redis-cluster")]
    pub(super) fn from_cluster_client(client: ClusterClient) -> Target {
        Target {
            servers: Servers::Cluster(Box::new(client)),
            url: "redis+cluster://(an application's ClusterClient)".to_owned(),
            // Its TLS settings are its own; the crypto provider is installed when TLS is built.
            tls: cfg!(feature = "redis-tls"),
        }
    }

    /// Reads a Redis URL: its scheme says one server or a Cluster, and TLS or not.
    pub(super) fn parse(url: &str) -> Result<Target, Error> {
        if cfg!(not(feature = "redis-tls")) && url.starts_with("rediss") {
            return Err(needs_tls(url));
        }
        let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
        match scheme {
            "redis" | "rediss" | "redis+unix" | "unix" => {
                let info = parse_node(url)?;
                let described = describe(&info);
                let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = Client::open(info.set_redis_settings(settings))
                    .map_err(|e| Error::Config(format!("store `{described}`: {e}")))?;
                Ok(Target {
                    servers: Servers::Node(Box::new(client)),
                    url: described,
                    tls,
                })
            }
            #[cfg(feature = "redis-cluster")]
            "redis+cluster" | "rediss+cluster" => parse_cluster(url),
            #[cfg(not(feature = "redis-cluster"))]
            "redis+cluster" | "rediss+cluster" => Err(Error::Config(format!(
                "store `{}` is a Redis Cluster, which needs {}",
                redact(url),
                crate::error::needs_feature("redis-cluster")
            ))),
            _ => Err(Error::Config(format!(
                "store `{}` is not a Redis URL; expected redis://host:port/db, rediss://host:port/db, \
                 redis+unix:///path or redis+cluster://host1:port1,host2:port2",
                redact(url)
            ))),
        }
    }
}

/// The error for a TLS URL in a build without TLS.
pub(super) fn needs_tls(url: &str) -> Error {
    Error::Config(format!(
        "store `{}` uses TLS, which needs {}",
        redact(url),
        crate::error::needs_feature("redis-tls")
    ))
}

/// The per-connection settings of a store.
#[derive(Clone, Copy)]
pub(super) struct Timeouts {
    /// How long making a connection may take.
    pub(super) connect: Duration,
    /// How long one attempt of a command may take inside the cluster client, which then
    /// retries (on one server the store alone times its commands).
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
    pub(super) attempt: Duration,
}

impl Servers {
    /// A connection for commands, and the runtime it was made on (see [`ConnectRuntime`]). `on_push`
    /// receives the pushes of a single-server connection (a cluster connection handles its own:
    /// it reconnects a node whose socket closed).
    pub(super) async fn connect(
        &self,
        timeouts: Timeouts,
        on_push: impl redis::aio::AsyncPushSender,
        home: &ConnectRuntime,
    ) -> RedisResult<(Conn, DrivenBy)> {
        match self {
            Servers::Node(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(None)
                    .set_push_sender(on_push);
                let client = client.clone();
                let make = async move {
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                };
                let (conn, made_on) = home.make(make).await?;
                Ok((Conn::Node(conn), made_on))
            }
            #[cfg(feature = "redis-cluster")]
            Servers::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.attempt);
                Servers::cluster(client, config, home).await
            }
        }
    }

    /// A connection whose pushes (pub/sub messages, and on one server the closing of the
    /// socket) all go to `on_push`, and the runtime it was made on.
    pub(super) async fn subscriber(
        &self,
        timeouts: Timeouts,
        on_push: impl redis::aio::AsyncPushSender,
        home: &ConnectRuntime,
    ) -> RedisResult<(Conn, DrivenBy)> {
        match self {
            Servers::Node(_) => self.connect(timeouts, on_push, home).await,
            #[cfg(feature = "redis-cluster")]
            Servers::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.attempt)
                    .set_push_sender(on_push);
                Servers::cluster(client, config, home).await
            }
        }
    }

    /// A Cluster connection: its task, and the node connections it makes then and later, run
    /// on the runtime it is made on.
    #[cfg(feature = "redis-cluster")]
    async fn cluster(
        client: &ClusterClient,
        config: ClusterConfig,
        home: &ConnectRuntime,
    ) -> RedisResult<(Conn, DrivenBy)> {
        let client = client.clone();
        let make = async move { client.get_async_connection_with_config(config).await };
        let (conn, made_on) = home.make(make).await?;
        Ok((Conn::Cluster(conn), made_on))
    }

    /// Whether this is a Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        #[cfg(feature = "redis-cluster")]
        return matches!(self, Servers::Cluster(_));
        #[cfg(not(feature = "redis-cluster"))]
        false
    }
}

/// A connection to one server or to a Cluster. Cloning it shares it (both are multiplexed).
#[derive(Clone)]
pub(super) enum Conn {
    Node(MultiplexedConnection),
    #[cfg(feature = "redis-cluster")]
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether this connection reaches a Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        #[cfg(feature = "redis-cluster")]
        return matches!(self, Conn::Cluster(_));
        #[cfg(not(feature = "redis-cluster"))]
        false
    }

    /// Sends `cmd` to every master of the Cluster and requires each to succeed; on one server,
    /// to that server. Answers per node.
    pub(super) async fn on_every_master(&mut self, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Conn::Node(conn) => conn.req_packed_command(&cmd).await,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::Special),
                ));
                conn.route_command(cmd, routing).await
            }
        }
    }

    /// Sends `cmd` to the master that holds `key` (on one server, to that server): for the
    /// commands that name no key, such as `SCRIPT LOAD`, but matter to one key's node.
    pub(super) async fn on_master_of(&mut self, key: &str, cmd: Cmd) -> RedisResult<Value> {
        #[cfg(not(feature = "redis-cluster"))]
        let _ = key; // one server holds every key
        match self {
            Conn::Node(conn) => conn.req_packed_command(&cmd).await,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                conn.route_command(cmd, routing).await
            }
        }
    }

    /// Subscribes to `channel`: `SUBSCRIBE` on one server, `SSUBSCRIBE` (sharded pub/sub, on
    /// the node of the channel's slot) on a Cluster.
    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Node(conn) => conn.subscribe(channel).await,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    /// Undoes [`subscribe`](Conn::subscribe).
    pub(super) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Node(conn) => conn.unsubscribe(channel).await,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(conn) => conn.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(conn) => conn.get_db(),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Parses a URL naming one Redis server.
fn parse_node(url: &str) -> Result<ConnectionInfo, Error> {
    url.into_connection_info().map_err(|e| {
        Error::Config(format!(
            "store `{}` is not a valid Redis URL ({e}); expected redis://[user:password@]host[:port][/db]",
            redact(url)
        ))
    })
}

/// Parses `redis+cluster://[user:password@]host1:port1,host2:port2[/0]` (or `rediss+cluster`).
#[cfg(feature = "redis-cluster")]
fn parse_cluster(url: &str) -> Result<Target, Error> {
    let shown = redact(url);
    let bad = |why: &str| {
        Error::Config(format!(
            "store `{shown}` is not a valid Redis Cluster URL ({why}); expected \
             redis+cluster://[user:password@]host1:port1,host2:port2 or rediss+cluster://…"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no `://`"))?;
    let node_scheme = match scheme {
        "redis+cluster" => "redis",
        _ => "rediss",
    };
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !matches!(path, "" | "/" | "/0") {
        return Err(bad("a Redis Cluster has database 0 only"));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut seeds = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(bad("an empty host in the list"));
        }
        let node = match userinfo {
            Some(userinfo) => format!("{node_scheme}://{userinfo}@{host}/0"),
            None => format!("{node_scheme}://{host}/0"),
        };
        let info = node
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(&e.to_string()))?;
        seeds.push(info);
    }
    let first = seeds.first().ok_or_else(|| bad("no host"))?;
    let tls = matches!(first.addr(), ConnectionAddr::TcpTls { .. });
    let user = first
        .redis_settings()
        .username()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let addresses: Vec<String> = seeds
        .iter()
        .map(|info| match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                format!("{}:{port}", bracket(host))
            }
            other => other.to_string(),
        })
        .collect();
    let described = format!("{scheme}://{user}{}", addresses.join(","));
    let client = ClusterClientBuilder::new(seeds)
        .use_protocol(ProtocolVersion::RESP3)
        .retries(RETRIES)
        .min_retry_wait(RETRY_MIN_WAIT_MS)
        .max_retry_wait(RETRY_MAX_WAIT_MS)
        .retry_wait_formula(RETRY_MIN_WAIT_MS, 2)
        // The store bounds every operation with its own command_timeout.
        .overall_response_timeout(None)
        .build()
        .map_err(|e| Error::Config(format!("store `{described}`: {e}")))?;
    Ok(Target {
        servers: Servers::Cluster(Box::new(client)),
        url: described,
        tls,
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
pub(super) fn redact(url: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn described(url: &str) -> String {
        Target::parse(url)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .url
    }

    #[test]
    fn descriptions_leave_out_the_password() {
        for (url, expected) in [
            ("redis://127.0.0.1:7000/2", "redis://127.0.0.1:7000/2"),
            ("redis://:secret@localhost:7000", "redis://localhost:7000/0"),
            (
                "redis://app:secret@localhost/3",
                "redis://app@localhost:6379/3",
            ),
            (
                "rediss://app:secret@cache.internal:6380/0",
                "rediss://app@cache.internal:6380/0",
            ),
            (
                "redis+unix:///run/redis.sock",
                "redis+unix:///run/redis.sock?db=0",
            ),
            (
                "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
                "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            ),
            (
                "redis+cluster://app:secret@h1:7000, h2:7001/0",
                "redis+cluster://app@h1:7000,h2:7001",
            ),
            (
                "rediss+cluster://:secret@[::1]:7000,h2:7001",
                "rediss+cluster://[::1]:7000,h2:7001",
            ),
        ] {
            if url.starts_with("rediss") && cfg!(not(feature = "redis-tls"))
                || url.contains("+cluster") && cfg!(not(feature = "redis-cluster"))
            {
                continue;
            }
            let text = described(url);
            assert_eq!(text, expected, "{url}");
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    #[cfg(feature = "redis-cluster")]
    fn cluster_urls_name_a_cluster_and_tls() {
        let plain = Target::parse("redis+cluster://h1:7000,h2:7001,h3:7002").unwrap();
        assert!(plain.servers.is_cluster() && !plain.tls);
        for url in ["rediss+cluster://h1:7000", "rediss://h1:7000/0"] {
            match Target::parse(url) {
                Ok(tls) if cfg!(feature = "redis-tls") => assert!(tls.tls, "{url}"),
                Err(Error::Config(message)) if cfg!(not(feature = "redis-tls")) => {
                    assert!(message.contains("`redis-tls` feature"), "{message}")
                }
                _ => panic!("{url}: TLS with the feature, a clear error without it"),
            }
        }
    }

    #[test]
    #[cfg(not(feature = "redis-cluster"))]
    fn cluster_urls_need_the_cluster_feature() {
        match Target::parse("redis+cluster://a:secret@h1:7000,h2:7001") {
            Err(Error::Config(message)) => {
                assert!(message.contains("`redis-cluster` feature"), "{message}");
                // The package users add, at this version: the crate `idem` is someone else's.
                let version = env!("CARGO_PKG_VERSION").rsplit_once('.').unwrap().0;
                let line = format!(
                    r#"`idem-fn = {{ version = "{version}", features = ["redis-cluster"] }}`"#
                );
                assert!(message.contains(&line), "{message}");
                assert!(!message.contains("secret"), "{message}");
            }
            Err(other) => panic!("expected a config error, got {other:?}"),
            Ok(target) => panic!("expected a config error, got {}", target.url),
        }
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for url in [
            "redis://:secret@host:notaport/0",
            "redis+cluster://a:secret@h1:7000,,h2:7001",
            "redis+cluster://a:secret@h1:7000,h2:7001/3",
            "redis+cluster://a:secret@h1:x,h2:7001",
            "redis+cluster://a:secret@",
            "http://user:secret@host",
        ] {
            match Target::parse(url) {
                Err(Error::Config(message)) => assert!(!message.contains("secret"), "{message}"),
                Err(other) => panic!("{url}: expected a config error, got {other:?}"),
                Ok(target) => panic!("{url}: expected a config error, got {}", target.url),
            }
        }
    }
}
