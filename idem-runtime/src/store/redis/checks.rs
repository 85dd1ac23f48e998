//! What [`RedisStore::connect`] checks before the first call: that the servers answer, run
//! Redis 7.0 or later, are of the kind the URL says, have the scripts loaded, and cannot evict
//! records (unless the user accepts it).
//!
//! Eviction is read from `INFO memory` (`maxmemory` and `maxmemory_policy`), sent in the same
//! round trip as `INFO server`, not from `CONFIG GET`: managed services (ElastiCache,
//! MemoryStore, Azure Cache…) disable or rename `CONFIG`, while `INFO` is there wherever Redis
//! is, so one way of reading covers every deployment and costs no extra round trip. A server
//! with a `maxmemory` and any policy but `noeviction` evicts idem's records when full: every
//! record has an expiry, so the `volatile-*` policies pick them too. An evicted claim or result
//! lets its key run again, silently; so such a server is refused, unless
//! [`Config::allow_eviction`] says the risk is accepted (then a warning says it once). With
//! `noeviction`, a full server refuses writes instead (`OOM`), and calls fail with
//! [`StoreErrorKind::Full`] rather than run twice. The policy is read at connect: a server
//! whose policy is changed afterwards is not checked again.
//!
//! [`RedisStore::connect`]: super::RedisStore::connect
//! [`Config::allow_eviction`]: crate::Config::allow_eviction

use std::time::Duration;

use redis::{Cmd, FromRedisValue, RedisResult, Value};

use crate::error::{Error, StoreError, StoreErrorKind};

use super::RedisStore;
use super::connections::NoConnection;
use super::failure;
use super::scripts::Lua;
use super::servers::Conn;

/// What the masters answered to `INFO server` and to `INFO memory`.
struct Inspected {
    servers: Vec<Said>,
    memories: Vec<Said>,
}

/// One master's answer to an `INFO` command.
struct Said {
    /// The node's address on a Cluster; `None` on one server.
    node: Option<String>,
    info: String,
}

impl Said {
    /// `Redis at <url>`, with the node on a Cluster: the subject of a message about it.
    fn at(&self, url: &str) -> String {
        match &self.node {
            Some(node) => format!("Redis at {url} (node {node})"),
            None => format!("Redis at {url}"),
        }
    }
}

/// Why the start-up check failed.
enum Checked {
    Link(NoConnection),
    Command(redis::RedisError),
}

/// Whether a server can evict records, as its `INFO memory` says.
#[derive(Debug, PartialEq, Eq)]
enum Eviction {
    /// No `maxmemory`, or the `noeviction` policy: records leave by their expiry only.
    Never,
    /// Records are evicted when the server holds `maxmemory` bytes, by `policy`.
    Possible { maxmemory: u64, policy: String },
    /// `INFO memory` does not say.
    Unknown,
}

impl RedisStore {
    /// Checks that the servers answer, run Redis 7.0 or later, are of the kind the URL says,
    /// have the scripts loaded and cannot evict records (or `allow_eviction`): one pipelined
    /// round trip on one server; on a Cluster, one round trip per command to every master, all
    /// at once.
    pub(super) async fn check(
        &self,
        connect_timeout: Duration,
        allow_eviction: bool,
    ) -> Result<(), Error> {
        let url = &self.shared.url;
        let unreachable = |source: StoreError| Error::Connect {
            store: url.clone(),
            source,
        };
        let answer = tokio::time::timeout(connect_timeout, async {
            let mut lent = self.shared.lender.fill().await.map_err(Checked::Link)?;
            self.survey(&mut lent.conn).await.map_err(Checked::Command)
        })
        .await;
        let inspected = match answer {
            Ok(Ok(inspected)) => inspected,
            Err(_) => {
                return Err(unreachable(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "Redis at {url} did not answer within {connect_timeout:?} (connect_timeout)"
                    ),
                )));
            }
            Ok(Err(Checked::Link(NoConnection::Failed(e)) | Checked::Command(e)))
                if failure::is_auth(&e) =>
            {
                return Err(Error::Config(format!(
                    "Redis at {url} refused the credentials ({e}); check the user and password in the store URL"
                )));
            }
            Ok(Err(Checked::Link(NoConnection::Failed(e)) | Checked::Command(e)))
                if failure::is_not_a_cluster(&e) =>
            {
                return Err(Error::Config(format!(
                    "Redis at {url} is not part of a Redis Cluster ({e}); name a single server with redis://host:port/db"
                )));
            }
            Ok(Err(Checked::Link(e))) => return Err(unreachable(failure::no_connection(e, url))),
            Ok(Err(Checked::Command(e))) => return Err(unreachable(failure::command(e, url))),
        };
        for server in &inspected.servers {
            let at = server.at(url);
            match server_version(&server.info) {
                Some((major, _)) if major >= 7 => {}
                Some((major, minor)) => {
                    return Err(Error::Config(format!(
                        "{at} runs version {major}.{minor}; RedisStore needs Redis 7.0 or later (SET … NX GET)"
                    )));
                }
                None => {
                    return Err(Error::Config(format!(
                        "{at} does not report its version; RedisStore needs Redis 7.0 or later"
                    )));
                }
            }
            if !self.shared.cluster && info_field(&server.info, "redis_mode") == Some("cluster") {
                return Err(Error::Config(format!(
                    "{at} is a node of a Redis Cluster; name the cluster with redis+cluster://host1:port1,host2:port2"
                )));
            }
        }
        let mut evicting = Vec::new();
        for memory in &inspected.memories {
            let at = memory.at(url);
            match eviction(&memory.info) {
                Eviction::Never => {}
                Eviction::Possible { maxmemory, policy } => evicting.push(format!(
                    "{at} has maxmemory {maxmemory} bytes and maxmemory-policy {policy}"
                )),
                Eviction::Unknown => evicting.push(format!(
                    "{at} does not report maxmemory and maxmemory_policy in INFO memory"
                )),
            }
        }
        if evicting.is_empty() {
            return Ok(());
        }
        let found = evicting.join("; ");
        if allow_eviction {
            tracing::warn!(
                store = %url,
                "{found}: it may evict idem's records when full, and an evicted claim or result \
                 lets its call run again; accepted by allow_eviction"
            );
            return Ok(());
        }
        Err(Error::Config(format!(
            "{found}: it may evict idem's records when full (every record has an expiry, so \
             volatile-* policies evict them too), and an evicted claim or result lets its call \
             run again. Set maxmemory-policy to noeviction (or maxmemory to 0) on the server, \
             or accept the risk with Config::allow_eviction(true) or IDEM_ALLOW_EVICTION=1"
        )))
    }

    /// `INFO server` and `INFO memory` of every master, after loading the scripts on them.
    #[cfg_attr(not(feature = "redis-cluster"), allow(irrefutable_let_patterns))]
    async fn survey(&self, conn: &mut Conn) -> RedisResult<Inspected> {
        let scripts = self.shared.scripts.all();
        if let Conn::Node(node) = conn {
            let mut pipe = redis::pipe();
            pipe.cmd("INFO").arg("server");
            pipe.cmd("INFO").arg("memory");
            for lua in scripts {
                pipe.cmd("SCRIPT").arg("LOAD").arg(lua.source).ignore();
            }
            let (server, memory): (String, String) = pipe.query_async(node).await?;
            let said = |info| vec![Said { node: None, info }];
            return Ok(Inspected {
                servers: said(server),
                memories: said(memory),
            });
        }
        let on_every_master = |cmd: Cmd| {
            let mut conn = conn.clone();
            async move { conn.on_every_master(cmd).await.and_then(per_node) }
        };
        let load = |lua: &Lua| {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(lua.source);
            on_every_master(load)
        };
        let info = |section: &str| {
            let mut info = redis::cmd("INFO");
            info.arg(section);
            on_every_master(info)
        };
        let [complete, release, renew, peek, forget, issue, redeem] = scripts;
        let (servers, memories, complete, release, renew, peek, forget, issue, redeem) = tokio::join!(
            info("server"),
            info("memory"),
            load(complete),
            load(release),
            load(renew),
            load(peek),
            load(forget),
            load(issue),
            load(redeem),
        );
        for loaded in [complete, release, renew, peek, forget, issue, redeem] {
            loaded?;
        }
        let said = |answers: Vec<(Option<String>, Value)>| -> RedisResult<Vec<Said>> {
            answers
                .into_iter()
                .map(|(node, info)| {
                    Ok(Said {
                        node,
                        info: String::from_redis_value(info)?,
                    })
                })
                .collect()
        };
        Ok(Inspected {
            servers: said(servers?)?,
            memories: said(memories?)?,
        })
    }
}

/// The answers of a command sent to every master (a map of node to answer on a Cluster), each
/// checked for an error, with the node's address when the answer names it.
fn per_node(answer: Value) -> RedisResult<Vec<(Option<String>, Value)>> {
    let answers = match answer {
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(node, answer)| (String::from_redis_value(node).ok(), answer))
            .collect(),
        one => vec![(None, one)],
    };
    answers
        .into_iter()
        .map(|(node, answer)| Ok((node, answer.extract_error()?)))
        .collect()
}

/// The value of the `name:value` line of an `INFO` answer.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (field, value) = line.trim().split_once(':')?;
        (field == name).then_some(value)
    })
}

/// `(major, minor)` of the `redis_version` line of `INFO server`.
fn server_version(info: &str) -> Option<(u32, u32)> {
    let version = info_field(info, "redis_version")?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// Whether a server whose `INFO memory` is `info` can evict records.
fn eviction(info: &str) -> Eviction {
    let maxmemory = info_field(info, "maxmemory").and_then(|v| v.parse::<u64>().ok());
    let policy = info_field(info, "maxmemory_policy");
    match (maxmemory, policy) {
        // No limit: nothing is evicted, whatever the policy.
        (Some(0), _) | (Some(_), Some("noeviction")) => Eviction::Never,
        (Some(maxmemory), Some(policy)) => Eviction::Possible {
            maxmemory,
            policy: policy.to_owned(),
        },
        _ => Eviction::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(server_version(info), Some((7, 0)));
        assert_eq!(info_field(info, "redis_mode"), Some("standalone"));
        assert_eq!(server_version("redis_version:6.2.14\r\n"), Some((6, 2)));
        assert_eq!(server_version("# Server\r\n"), None);
    }

    #[test]
    fn eviction_is_read_from_info_memory() {
        let memory = |maxmemory: &str, policy: &str| {
            format!(
                "# Memory\r\nused_memory:1000\r\nmaxmemory:{maxmemory}\r\nmaxmemory_human:2.00M\r\n\
                 maxmemory_policy:{policy}\r\nallocator_frag_ratio:1.0\r\n"
            )
        };
        assert_eq!(eviction(&memory("0", "allkeys-lru")), Eviction::Never);
        assert_eq!(eviction(&memory("2097152", "noeviction")), Eviction::Never);
        for policy in [
            "allkeys-lru",
            "volatile-ttl",
            "volatile-lfu",
            "allkeys-random",
        ] {
            assert_eq!(
                eviction(&memory("2097152", policy)),
                Eviction::Possible {
                    maxmemory: 2_097_152,
                    policy: policy.to_owned()
                }
            );
        }
        assert_eq!(
            eviction("# Memory\r\nused_memory:1000\r\n"),
            Eviction::Unknown
        );
        assert_eq!(eviction("maxmemory:100\r\n"), Eviction::Unknown);
        assert_eq!(eviction("maxmemory:0\r\n"), Eviction::Never);
    }

    #[test]
    fn answers_of_every_master_are_checked_one_by_one() {
        let ok = Value::Map(vec![
            (Value::BulkString(b"a:1".to_vec()), Value::Okay),
            (Value::BulkString(b"b:2".to_vec()), Value::Int(1)),
        ]);
        assert_eq!(
            per_node(ok).unwrap(),
            vec![
                (Some("a:1".to_owned()), Value::Okay),
                (Some("b:2".to_owned()), Value::Int(1))
            ]
        );
        assert_eq!(
            per_node(Value::Int(3)).unwrap(),
            vec![(None, Value::Int(3))]
        );
    }
}
