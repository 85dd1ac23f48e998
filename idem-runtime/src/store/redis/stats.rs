//! [`Store::stats`](crate::Store::stats) on Redis: the records under a prefix, counted by state
//! and by scope (read from each key found) with `SCAN`, never `KEYS` (which blocks the server
//! while it walks every key).
//!
//! Each master (the one server, or every master of a Cluster) is walked with its own `SCAN`
//! cursor, `MATCH <prefix>*` (the prefix's glob characters escaped), `TYPE string`, a page of
//! [`PAGE`] keys examined at a time; the masters of a Cluster take turns, a page each, so that
//! a sample is drawn from all of them. The keys of a page are classified in one pipelined round
//! trip of `GETRANGE key 0 7`: a claim starts with its mark, anything else is a completed
//! record, and an empty answer is a key that expired in between (not counted). A token's
//! record (its key names the token space, see `store/token.rs`) is counted as a token,
//! redeemed or not by its value; a scope's group of tokens is a sorted set, which `TYPE
//! string` leaves out. Counting stops
//! at the first key found past `limit` counted records (the counts are then a sample); `DBSIZE`
//! of every master gives the keys held in all.
//!
//! Every command is bounded (a page of `SCAN`, a page of `GETRANGE`), so the servers never
//! block; but when the prefix's keys are few among many others, reaching `limit` (or the end)
//! takes `SCAN` over the whole keyspace: round trips grow with `DBSIZE / 1000`.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionLike;
#[cfg(feature = "redis-cluster")]
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{Cmd, FromRedisValue, RedisResult, Value};

use super::RedisStore;
use super::failure;
use super::servers::Conn;
use crate::error::{StoreError, StoreErrorKind};
use crate::record::CLAIM_MARK;
use crate::store::Stats;
use crate::store::token::{REDEEMED, is_token_key};

/// How many keys one `SCAN` examines (its `COUNT`).
const PAGE: usize = 1000;

/// One master's walk: its address on a Cluster (`None` for the one server), its cursor.
struct Walk {
    node: Option<(String, u16)>,
    cursor: u64,
    done: bool,
}

impl Walk {
    /// A walk from the start of `node`'s keyspace.
    fn on(node: Option<(String, u16)>) -> Walk {
        Walk {
            node,
            cursor: 0,
            done: false,
        }
    }
}

impl RedisStore {
    /// Counts the live records whose keys start with `prefix`, at most `limit` of them.
    pub(super) async fn count(&self, prefix: &str, limit: usize) -> Result<Stats, StoreError> {
        let shared = &self.shared;
        let url = shared.url.as_str();
        let within = shared.command_timeout;
        // Held to the end: a Cluster or pooled connection stays this operation's until then.
        let lent = shared
            .lender
            .lend()
            .await
            .map_err(|e| failure::no_connection(e, url))?;
        let mut conn = lent.conn.clone();
        let (mut walks, store_keys) = masters(&mut conn, url, within).await?;
        let pattern = format!("{}*", glob_escape(prefix));
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut stats = Stats::new(0, 0, true);
        let mut exact = true;
        'walk: while walks.iter().any(|walk| !walk.done) {
            for walk in walks.iter_mut().filter(|walk| !walk.done) {
                let mut scan = redis::cmd("SCAN");
                scan.arg(walk.cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(PAGE)
                    .arg("TYPE")
                    .arg("string");
                let answer = bounded(on_node(&mut conn, walk, scan), url, within).await?;
                let (cursor, keys) = <(String, Vec<Vec<u8>>)>::from_redis_value(answer)
                    .map_err(|e| failure::command(e.into(), url))?;
                walk.cursor = cursor.parse().map_err(|_| {
                    StoreError::new(
                        StoreErrorKind::Protocol,
                        format!("Redis at {url} answered SCAN with the cursor `{cursor}`"),
                    )
                })?;
                walk.done = walk.cursor == 0;
                // SCAN may return a key twice (the table grew or shrank meanwhile).
                let fresh: Vec<Vec<u8>> =
                    keys.into_iter().filter(|key| !seen.contains(key)).collect();
                let room = limit.saturating_sub(seen.len());
                if fresh.len() > room {
                    exact = false;
                }
                let batch: Vec<Vec<u8>> = fresh.into_iter().take(room).collect();
                if !batch.is_empty() {
                    let heads = bounded(heads(&mut conn, walk, &batch), url, within).await?;
                    for (key, head) in batch.into_iter().zip(heads) {
                        if head.is_empty() {
                            continue; // expired since the SCAN
                        }
                        if is_token_key(prefix, &key) {
                            stats.count_token(head.as_slice() == REDEEMED.as_bytes());
                        } else {
                            stats.count(prefix, &key, head.as_slice() == CLAIM_MARK.as_bytes());
                        }
                        seen.insert(key);
                    }
                }
                if !exact {
                    break 'walk;
                }
            }
        }
        stats.exact = exact;
        Ok(stats.with_store_keys(Some(store_keys)))
    }
}

/// The masters to walk and their keys in all (`DBSIZE` of each, summed): the one server, or
/// every master of a Cluster by the address the Cluster gives it.
async fn masters(
    conn: &mut Conn,
    url: &str,
    within: Duration,
) -> Result<(Vec<Walk>, u64), StoreError> {
    match conn {
        Conn::Node(node) => {
            let dbsize = redis::cmd("DBSIZE");
            let answer = bounded(node.req_packed_command(&dbsize), url, within).await?;
            let keys =
                u64::from_redis_value(answer).map_err(|e| failure::command(e.into(), url))?;
            Ok((vec![Walk::on(None)], keys))
        }
        #[cfg(feature = "redis-cluster")]
        Conn::Cluster(cluster) => cluster_masters(cluster, url, within).await,
    }
}

/// Every master of a Cluster, by the address the Cluster gives it, and the sum of their
/// `DBSIZE`s.
#[cfg(feature = "redis-cluster")]
async fn cluster_masters(
    cluster: &mut redis::cluster_async::ClusterConnection,
    url: &str,
    within: Duration,
) -> Result<(Vec<Walk>, u64), StoreError> {
    let routing = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::Special),
    ));
    let dbsize = cluster.route_command(redis::cmd("DBSIZE"), routing);
    let answer = bounded(dbsize, url, within).await?;
    let unexpected = |what: String| {
        StoreError::new(
            StoreErrorKind::Protocol,
            format!("Redis at {url} answered DBSIZE on every master with {what}"),
        )
    };
    let Value::Map(per_node) = answer else {
        return Err(unexpected(format!("{answer:?}")));
    };
    let mut walks = Vec::with_capacity(per_node.len());
    let mut total = 0;
    for (node, keys) in per_node {
        let node = String::from_redis_value(node).map_err(|e| failure::command(e.into(), url))?;
        let address = node
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
            .ok_or_else(|| unexpected(format!("the node address `{node}`")))?;
        total += u64::from_redis_value(keys.extract_error().map_err(|e| failure::command(e, url))?)
            .map_err(|e| failure::command(e.into(), url))?;
        walks.push(Walk::on(Some(address)));
    }
    Ok((walks, total))
}

/// Sends `cmd` to the master `walk` is on.
async fn on_node(conn: &mut Conn, walk: &Walk, cmd: Cmd) -> RedisResult<Value> {
    match (conn, &walk.node) {
        #[cfg(feature = "redis-cluster")]
        (Conn::Cluster(cluster), Some((host, port))) => {
            let route = SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            };
            cluster
                .route_command(cmd, RoutingInfo::SingleNode(route))
                .await
        }
        (conn, _) => conn.req_packed_command(&cmd).await,
    }
}

/// The first bytes of each of `keys` (as many as a claim's mark), in one pipelined round
/// trip to the master `walk` is on; empty for a key that is gone.
async fn heads(conn: &mut Conn, walk: &Walk, keys: &[Vec<u8>]) -> RedisResult<Vec<Vec<u8>>> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("GETRANGE")
            .arg(key)
            .arg(0)
            .arg(CLAIM_MARK.len() - 1);
    }
    let answers = match (conn, &walk.node) {
        #[cfg(feature = "redis-cluster")]
        (Conn::Cluster(cluster), Some((host, port))) => {
            let route = SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            };
            cluster.route_pipeline(pipe, 0, keys.len(), route).await?
        }
        (conn, _) => conn.req_packed_commands(&pipe, 0, keys.len()).await?,
    };
    answers
        .into_iter()
        .map(|answer| Vec::<u8>::from_redis_value(answer.extract_error()?).map_err(Into::into))
        .collect()
}

/// Runs one round trip within the command timeout.
async fn bounded<T>(
    request: impl Future<Output = RedisResult<T>>,
    url: &str,
    within: Duration,
) -> Result<T, StoreError> {
    match tokio::time::timeout(within, request).await {
        Ok(answer) => answer.map_err(|e| failure::command(e, url)),
        Err(_) => Err(failure::timed_out(url, within)),
    }
}

/// `text` with the characters of a Redis glob pattern escaped, so that it matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for ch in text.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_of_a_prefix_are_escaped() {
        assert_eq!(glob_escape("idem:"), "idem:");
        assert_eq!(glob_escape(r"a\:b*[x]?:"), r"a\\:b\*\[x\]\?:");
    }
}
