//! The command path of every operation: a connection lent, the request sent within the
//! command timeout (a missing script loaded, a closed connection replaced, `WAIT` and `PTTL`
//! behind the write), the answer read.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, ServerErrorKind, Value};

use crate::error::StoreError;
use crate::record::Claim;
use crate::store::Fence;

use super::connections::ConnectionSource;
use super::failure;
use super::runtimes;
use super::scripts::{Lua, Scripts};
use super::servers::Conn;
use super::waiters::Hub;

/// What a store's clones share: where its connections come from, what wakes its waiters,
/// and the settings of its command path.
pub(super) struct Shared {
    pub(super) lender: ConnectionSource,
    /// What wakes waiting calls: pub/sub on a connection of the store's own. `None` on an
    /// application's pool, whose connections are lent for one operation at a time: waiting
    /// calls look again every [`FALLBACK_POLL`](super::FALLBACK_POLL) instead.
    pub(super) hub: Option<Arc<Hub>>,
    pub(super) scripts: &'static Scripts,
    pub(super) cluster: bool,
    pub(super) url: String,
    pub(super) pool_size: usize,
    pub(super) command_timeout: Duration,
    pub(super) replicas: Option<Replicas>,
}

/// How many replicas must acknowledge a claim or a result (`min_replicas`) and how long a
/// write waits for them (`replica_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replicas {
    pub(super) count: usize,
    pub(super) timeout: Duration,
}

impl Shared {
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
    pub(super) async fn query(
        &self,
        request: &Query<'_>,
        undo: Option<(&[u8], Duration)>,
    ) -> Result<Answer, StoreError> {
        let shared = self;
        let replicas = shared.replicas.filter(|_| request.replicated);
        let within = shared.command_timeout + replicas.map_or(Duration::ZERO, |r| r.timeout);
        let mut resent = None;
        loop {
            let lent = match &shared.lender {
                ConnectionSource::Own(links) => match resent {
                    None => match links.ready() {
                        Some(lent) => Ok(lent),
                        None => links.get().await,
                    },
                    Some(place) => links.again(place).await,
                },
                // Sent again, an operation takes another checkout (the closed connection was
                // taken out of the pool).
                #[cfg(feature = "deadpool-redis")]
                ConnectionSource::Pool(pool) => {
                    super::connections::lend_checkout(Box::pin(pool.get()).await)
                }
            };
            // A Cluster or a pooled connection stays this operation's until `lent` is dropped.
            let mut lent = lent.map_err(|e| failure::no_connection(e, &shared.url))?;
            match tokio::time::timeout(within, send(&mut lent.conn, request, replicas)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => {
                    if failure::breaks_connection(&error) {
                        lent.discard();
                    }
                    if resent.is_none() && lent.is_node() && failure::resend(&error) {
                        tracing::debug!(%error, "idem found its Redis connection closed; sending the command again on a new one");
                        resent = Some(lent.place);
                        continue;
                    }
                    return Err(failure::command(error, &shared.url));
                }
                Err(_) => {
                    // The server may be gone without a word (a dead peer sends no reset): the
                    // next operation on this connection's place makes a new one.
                    lent.discard();
                    if let Some((claim, lease)) = undo {
                        let undo = Undo {
                            key: request.key.to_owned(),
                            claim: claim.to_vec(),
                            scripts: shared.scripts,
                            within: lease,
                        };
                        undo.send(lent.conn.clone());
                    }
                    return Err(failure::timed_out(&shared.url, within));
                }
            }
        }
    }

    /// Runs a fenced script: 1 is [`Fence::Held`].
    pub(super) async fn fenced(&self, request: Query<'_>) -> Result<Fence, StoreError> {
        let answer = self.query(&request, None).await?;
        self.fence(answer.value)
    }

    pub(super) fn fence(&self, answer: Value) -> Result<Fence, StoreError> {
        match self.parse::<i64>(answer)? {
            1 => Ok(Fence::Held),
            _ => Ok(Fence::Lost),
        }
    }

    pub(super) fn parse<T: FromRedisValue>(&self, answer: Value) -> Result<T, StoreError> {
        T::from_redis_value(answer).map_err(|e| failure::command(e.into(), &self.url))
    }

    /// Checks that `min_replicas` replicas acknowledged a write.
    pub(super) fn replicated(&self, acked: Option<i64>, what: &str) -> Result<(), StoreError> {
        match (self.replicas, acked) {
            (Some(replicas), Some(acked)) if acked < replicas.count as i64 => Err(
                failure::not_replicated(&self.url, what, acked, replicas.count, replicas.timeout),
            ),
            _ => Ok(()),
        }
    }

    /// The lease left to `holder` on `key`, or `None` when it no longer holds the key.
    pub(super) async fn lease_left(
        &self,
        key: &str,
        holder: &Claim,
    ) -> Result<Option<Duration>, StoreError> {
        let request = Query::script(&self.scripts.peek, key, &[&holder.encoded()]);
        let answer = self.query(&request, None).await?;
        let left: i64 = self.parse(answer.value)?;
        Ok(u64::try_from(left).ok().map(Duration::from_millis))
    }
}

/// What [`Shared::query`] sends: a command on one key; for a script, the script to load
/// where the server answers `NOSCRIPT`; and what follows the command in the same round trip.
pub(super) struct Query<'a> {
    pub(super) cmd: Cmd,
    pub(super) key: &'a str,
    pub(super) script: Option<&'static Lua>,
    /// `WAIT` for `min_replicas` follows (when it is set).
    pub(super) replicated: bool,
    /// `PTTL key` follows: the lifetime left to the record the command found.
    pub(super) expiry: bool,
}

impl<'a> Query<'a> {
    pub(super) fn command(cmd: Cmd, key: &'a str) -> Self {
        Query {
            cmd,
            key,
            script: None,
            replicated: false,
            expiry: false,
        }
    }

    /// `EVALSHA sha 1 key args…`.
    pub(super) fn script(lua: &'static Lua, key: &'a str, args: &[&[u8]]) -> Self {
        let data = args.iter().map(|arg| arg.len()).sum::<usize>() + key.len() + 64;
        // Room made up front: a command grown from empty reallocates on nearly every word.
        let mut cmd = Cmd::with_capacity(args.len() + 4, data);
        cmd.arg("EVALSHA").arg(lua.sha()).arg(1).arg(key);
        for arg in args {
            cmd.arg(*arg);
        }
        Query {
            script: Some(lua),
            ..Query::command(cmd, key)
        }
    }

    pub(super) fn replicated(self) -> Self {
        Query {
            replicated: true,
            ..self
        }
    }

    pub(super) fn with_expiry(self, expiry: bool) -> Self {
        Query { expiry, ..self }
    }
}

/// The answers to a [`Query`].
pub(super) struct Answer {
    /// The command's.
    pub(super) value: Value,
    /// `PTTL`'s, when asked: milliseconds, or negative when the key has no expiry or is gone.
    pub(super) expiry: Option<i64>,
    /// `WAIT`'s, when sent: how many replicas acknowledged.
    pub(super) acked: Option<i64>,
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
    request: &Query<'_>,
    replicas: Option<Replicas>,
) -> RedisResult<Answer> {
    // Boxed, like the loading below: the rare path's state stays out of every command's future.
    let mut eval: Option<Box<Cmd>> = None;
    let mut loaded = false;
    loop {
        // The answers are read in this block, so that none of them is kept while a missing
        // script is loaded.
        let missing = {
            let cmd = eval.as_deref().unwrap_or(&request.cmd);
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
                    lua
                }
                (Err(error), _) => return Err(error),
                (Ok(value), _) => {
                    let number = |answer: Option<Value>| -> RedisResult<Option<i64>> {
                        match answer {
                            Some(answer) => {
                                Ok(Some(i64::from_redis_value(answer.extract_error()?)?))
                            }
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
        };
        loaded = true;
        if conn.is_cluster() {
            eval = Some(Box::new(evaluate(missing, &request.cmd)));
        } else {
            load(conn, request.key, missing).await?.extract_error()?;
        }
    }
}

/// `SCRIPT LOAD` of `lua` on the master of `key`, boxed: loading a script is rare.
fn load<'a>(
    conn: &'a mut Conn,
    key: &'a str,
    lua: &'static Lua,
) -> std::pin::Pin<Box<dyn Future<Output = RedisResult<Value>> + Send + 'a>> {
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(lua.source);
    Box::pin(conn.on_master_of(key, load))
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
        runtimes::spawn(false, async move {
            let request = Query::script(&self.scripts.release, &self.key, &[&self.claim]);
            let undone = tokio::time::timeout(self.within, send(&mut conn, &request, None)).await;
            let undone = undone.map(|answer| answer.map(|answer| answer.value));
            tracing::debug!(?undone, "idem released a claim whose SET timed out");
        });
    }
}

/// Whole milliseconds, at least one: Redis expiries are in milliseconds and never zero.
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::super::connections::Connections;
    use super::super::runtimes::ConnectRuntime;
    use super::super::servers::{Target, Timeouts};
    use super::*;

    /// The shared state of a store whose server is never asked: for the decisions made on an
    /// answer already read.
    fn unasked(replicas: Option<Replicas>) -> Shared {
        let target = Target::parse("redis://127.0.0.1:1").expect("a Redis URL");
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            attempt: Duration::from_secs(1),
        };
        let home = Arc::new(ConnectRuntime::default());
        let links = Connections::new(Arc::new(target.servers), home, timeouts, 1, false);
        Shared {
            lender: ConnectionSource::Own(links),
            hub: None,
            scripts: &super::super::scripts::NODE,
            cluster: false,
            url: target.url,
            pool_size: 1,
            command_timeout: Duration::from_secs(1),
            replicas,
        }
    }

    #[test]
    fn a_fenced_script_holds_on_1_only() {
        let shared = unasked(None);
        assert_eq!(shared.fence(Value::Int(1)).unwrap(), Fence::Held);
        assert_eq!(shared.fence(Value::Int(0)).unwrap(), Fence::Lost);
        assert!(shared.fence(Value::BulkString(b"x".to_vec())).is_err());
        assert_eq!(shared.parse::<i64>(Value::Int(7)).unwrap(), 7);
    }

    #[test]
    fn a_write_is_replicated_once_min_replicas_acknowledged_it() {
        let two = unasked(Some(Replicas {
            count: 2,
            timeout: Duration::from_millis(100),
        }));
        two.replicated(Some(2), "claim").expect("as many as asked");
        two.replicated(Some(3), "claim").expect("more than asked");
        let error = two.replicated(Some(1), "claim").unwrap_err();
        assert!(error.to_string().contains("only 1 of the 2"), "{error}");
        two.replicated(None, "claim").expect("no WAIT was sent");
        unasked(None)
            .replicated(Some(0), "claim")
            .expect("min_replicas unset");
    }

    #[test]
    fn a_query_names_its_script_and_what_follows_it() {
        let lua = &super::super::scripts::NODE.renew;
        // A key longer than the arguments: the room made for the words is their sum.
        let key = "idem:scope:a-key-longer-than-the-arguments";
        let request = Query::script(lua, key, &[b"c"]);
        assert!(request.script.is_some_and(|named| std::ptr::eq(named, lua)));
        assert!(!request.replicated && !request.expiry);
        let request = request.replicated().with_expiry(true);
        assert!(request.replicated && request.expiry);
        assert!(Query::command(redis::cmd("GET"), key).script.is_none());
    }

    #[test]
    fn expiries_are_whole_positive_milliseconds() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
    }

    #[test]
    fn a_script_missing_on_a_node_is_sent_whole_with_the_same_keys_and_arguments() {
        let lua = &super::super::scripts::CLUSTER.renew;
        let request = Query::script(lua, "idem:s:k", &[b"claim", b"30000"]);
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
