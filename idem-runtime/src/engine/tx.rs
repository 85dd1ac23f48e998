//! The state machine of a call in transactional mode (`tx = conn`): the claim and the result
//! are written through the caller's connection, inside its transaction, so that they commit or
//! roll back with the body's own writes. The call's frame (its key, settings, span, checks and
//! ending) is the plain path's (`frame.rs`); the statements are those of the
//! [`TxStore`] the connection's type names ([`Transactional`]).
//!
//! No lease is renewed and no heartbeat runs: the claim's row is invisible to every other
//! transaction until the caller commits, and by then it is completed. A concurrent duplicate
//! waits on the database's lock on the key (its claim waits for the claiming transaction to
//! end), bounded by `wait`. The claim's expiry (now + lease) is only a backstop, for a caller
//! that commits a claim its call never completed (a panic or a dropped call).
//!
//! Statements, besides the body's own:
//! - a replay: 1 (the claim, which reads the record);
//! - a first call of a plain `T`, or of a `Result` whose every error is stored: 2 (claim,
//!   complete);
//! - a first call of a `Result` whose errors may be released: 4 (claim, savepoint, complete,
//!   release of the savepoint); a released error: claim, savepoint, rollback to the
//!   savepoint, delete of the claim;
//! - on a connection outside any transaction, `BEGIN` and `COMMIT` (or `ROLLBACK`) around
//!   these, and no savepoint: a released error rolls the whole call back;
//! - whatever [`TxStore::prepare`] sends before the first claim (PostgreSQL: once per table and
//!   process, a `to_regclass` look for the table, so that a missing one is an error that
//!   leaves the caller's transaction usable).

use tokio::time::Instant;

use super::frame::{CallRequest, Finished, Frame, Lookup, Sealed};
use crate::codec::Codec;

use crate::error::Error;
use crate::observe::{StoreOp, timed};
use crate::outcome::{Outcome, Status};
use crate::record::{Claim, Record};
use crate::store::tx::{Claimed, Transactional, TxConnection, TxStore, UNSEEN_RETRIES};

/// [`execute`] on what a caller passed ([`TxConnection`]): idem's statements go through its
/// [`session`](TxConnection::session), and the body receives the connection
/// [`lent`](TxConnection::lend) from it.
pub(crate) async fn execute_on<A, R, B, S>(
    call: CallRequest,
    conn: &mut A,
    body: B,
    shape: S,
) -> Result<Outcome<R>, Error>
where
    A: TxConnection + ?Sized,
    B: AsyncFnOnce(&mut A::Conn) -> R,
    S: Codec<R>,
{
    let body = async move |session: &mut A::Session| body(A::lend(session)).await;
    execute(call, conn.session(), body, shape).await
}

/// Runs `body` once for the call's key, with the claim and the result written through `conn`
/// by the [`TxStore`] of its type.
pub(crate) async fn execute<C, R, B, S>(
    call: CallRequest,
    conn: &mut C,
    body: B,
    shape: S,
) -> Result<Outcome<R>, Error>
where
    C: Transactional + ?Sized,
    B: AsyncFnOnce(&mut C) -> R,
    S: Codec<R>,
{
    // The records live in the caller's database: a call needs no installed store, and then
    // runs with the default settings.
    let frame = Frame::open(&call, Lookup::Tx)?;
    let Some(store) = frame.store() else {
        unreachable!("a transactional call never reads the local cache");
    };
    let run = TxRun {
        frame: &frame,
        store: C::Store::of(store, frame.scope),
        claim: Claim::new(frame.fingerprint),
    };
    let result = frame.in_span(Box::pin(run.go(conn, body, shape))).await;
    frame.finish(result)
}

/// One call in transactional mode: its frame, the records of its connection's type, and its
/// claim.
struct TxRun<'f, T> {
    /// The call, resolved.
    frame: &'f Frame<'f>,
    /// The records of the connection's type.
    store: T,
    /// Its claim: a new token and the request's fingerprint.
    claim: Claim,
}

/// How the body's run ended, for the transaction around it.
enum Ended<R> {
    /// Keep what the call wrote.
    Kept(Finished<R>),
    /// The body's error is not stored: undo what the call wrote.
    Released(Finished<R>),
}

impl<T> TxRun<'_, T> {
    /// The call in the caller's transaction, or in one of its own when `conn` is outside any.
    async fn go<C, R, B, S>(self, conn: &mut C, body: B, shape: S) -> Result<Finished<R>, Error>
    where
        C: Send + ?Sized,
        T: TxStore<C>,
        B: AsyncFnOnce(&mut C) -> R,
        S: Codec<R>,
    {
        let key = &self.frame.key;
        if self.store.in_transaction(conn) {
            return match self.run(conn, body, shape, true).await? {
                Ended::Kept(ran) | Ended::Released(ran) => Ok(ran),
            };
        }
        // A connection outside any transaction gets one of its own for the call, rolled back
        // on an error before the call returns (dropped with the call's future, it rolls back
        // as its driver's transactions do: sqlx at the connection's next use, tokio-postgres's
        // queued at once).
        let mut own = self.store.begin(conn, key).await?;
        let ended = match self.run(&mut *own, body, shape, false).await {
            Ok(ended) => ended,
            Err(error) => {
                // The call's error is the one to report; a failed rollback leaves the
                // connection to its driver (the transaction's drop rolls back).
                let _ = self.store.rollback(own, key).await;
                return Err(error);
            }
        };
        match ended {
            Ended::Kept(ran) => {
                self.store.commit(own, key).await?;
                Ok(ran)
            }
            Ended::Released(ran) => {
                self.store.rollback(own, key).await?;
                Ok(ran)
            }
        }
    }

    /// The call inside a transaction: claim or replay, then the body and its record. With
    /// `savepoint`, a body whose error may be released runs after a savepoint, so that the
    /// release undoes its writes and leaves the caller's transaction usable.
    async fn run<C, R, B, S>(
        &self,
        conn: &mut C,
        body: B,
        mut shape: S,
        savepoint: bool,
    ) -> Result<Ended<R>, Error>
    where
        C: Send + ?Sized,
        T: TxStore<C>,
        B: AsyncFnOnce(&mut C) -> R,
        S: Codec<R>,
    {
        let key = &self.frame.key;
        if let Some(replayed) = self.claim_or_replay(conn, &shape).await? {
            return Ok(Ended::Kept(replayed));
        }
        if savepoint && shape.may_release() {
            let mut inner = self.store.begin(conn, key).await?;
            let value = self.frame.in_body(body(&mut *inner), false, None).await;
            return match self.frame.seal(&value, &mut shape) {
                None => {
                    self.store.rollback(inner, key).await?;
                    self.release(conn).await?;
                    Ok(Ended::Kept(Finished::new(value, Status::Executed)))
                }
                Some(sealed) => {
                    let ran = self.store_value(&mut *inner, value, sealed).await?;
                    self.store.commit(inner, key).await?;
                    Ok(Ended::Kept(ran))
                }
            };
        }
        let value = self.frame.in_body(body(conn), false, None).await;
        match self.frame.seal(&value, &mut shape) {
            // Without a savepoint, in a transaction of our own: rolling it back undoes the
            // claim and the body's writes together.
            None if !savepoint => Ok(Ended::Released(Finished::new(value, Status::Executed))),
            // A shape that said it never releases: the claim goes, the writes stay.
            None => {
                self.release(conn).await?;
                Ok(Ended::Kept(Finished::new(value, Status::Executed)))
            }
            Some(sealed) => self.store_value(conn, value, sealed).await.map(Ended::Kept),
        }
    }

    /// Claims the key, or replays its record, or waits for the transaction that holds it;
    /// `None` when the key is this call's.
    async fn claim_or_replay<C, R, S>(
        &self,
        conn: &mut C,
        shape: &S,
    ) -> Result<Option<Finished<R>>, Error>
    where
        C: Send + ?Sized,
        T: TxStore<C>,
        S: Codec<R>,
    {
        let TxRun {
            frame,
            store,
            claim,
        } = self;
        let key = &frame.key;
        let deadline = Instant::now() + frame.wait;
        let mut prepared = false;
        let mut waited = false;
        let mut unseen = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // The checks before the first claim are timed as part of it.
            let claimed = timed(frame.store_latency, StoreOp::Claim, async {
                if !prepared {
                    store.prepare(conn, key).await?;
                    prepared = true;
                }
                store.claim(conn, key, claim, frame.lease, left).await
            })
            .await?;
            let holder = match claimed {
                Claimed::Held => return Ok(None),
                Claimed::Found(Record::Completed { payload, .. }) => {
                    let value = frame.replay(&payload, shape)?;
                    return Ok(Some(Finished::replayed(value, waited)));
                }
                Claimed::Found(Record::InProgress(holder)) => holder,
                // Not an answer of the transactional claim (its lock wait running out is
                // `Error::InProgress` already), the same if it were.
                Claimed::Locked => return Err(frame.in_progress()),
                // The claim waited for another transaction's, committed after its snapshot:
                // a new statement sees it (under READ COMMITTED; stricter levels fail with a
                // serialization error instead).
                Claimed::Unseen => {
                    unseen += 1;
                    if unseen > UNSEEN_RETRIES {
                        return Err(frame.in_progress());
                    }
                    waited = true;
                    continue;
                }
            };
            // Held by a call outside any transaction (the plain store): wait as it would.
            if frame.mismatch(holder.fingerprint.as_ref()) {
                return Err(frame.key_mismatch());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(frame.in_progress());
            }
            if !timed(
                frame.store_latency,
                StoreOp::Wait,
                store.wait(key, &holder, deadline - now),
            )
            .await
            {
                return Err(frame.in_progress());
            }
            waited = true;
        }
    }

    /// Stores what the body returned, as the plain path would.
    async fn store_value<C, R>(
        &self,
        conn: &mut C,
        value: R,
        sealed: Sealed,
    ) -> Result<Finished<R>, Error>
    where
        C: Send + ?Sized,
        T: TxStore<C>,
    {
        let key = &self.frame.key;
        let held = timed(
            self.frame.store_latency,
            StoreOp::Complete,
            self.store
                .complete(conn, key, &self.claim, &sealed.bytes, self.frame.ttl),
        )
        .await?;
        if !held {
            tracing::warn!(key = %key, "idem's claim was deleted inside the transaction before its completion; the result is returned but not stored");
            return Ok(Finished::new(value, Status::NotStored));
        }
        Ok(Finished::stored(value, Status::Executed, sealed.unstorable))
    }

    /// Deletes the claim's row, so that a retry runs the body again.
    async fn release<C>(&self, conn: &mut C) -> Result<(), Error>
    where
        C: Send + ?Sized,
        T: TxStore<C>,
    {
        timed(
            self.frame.store_latency,
            StoreOp::Release,
            self.store.release(conn, &self.frame.key, &self.claim),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    //! The decisions of a transactional call, on a connection of the tests whose claims answer
    //! what each test scripts and which logs the statements the call sends: no database.

    use std::borrow::Cow;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::codec::{Disposition, Envelope, PlainCodec, ResultCodec};
    use crate::record::Fingerprint;
    use crate::store::StoreHandle;
    use crate::store::tx::TxFuture;

    /// A connection of the tests: the answers of its claims, in order, and what was sent.
    #[derive(Default)]
    struct Scripted {
        /// Transactions open on it: the caller's, then savepoints.
        depth: usize,
        /// What each claim answers; a claim beyond them fails the test.
        claims: VecDeque<Claimed>,
        /// Whether `complete` finds the claim's row.
        row_kept: bool,
        /// The statements, and `body` where the body ran.
        sent: Vec<String>,
    }

    impl Scripted {
        /// Outside any transaction, or inside the caller's (`depth` 1).
        fn new(depth: usize, claims: impl IntoIterator<Item = Claimed>) -> Self {
            Scripted {
                depth,
                claims: claims.into_iter().collect(),
                row_kept: true,
                sent: Vec::new(),
            }
        }

        fn send(&mut self, statement: impl Into<String>) {
            self.sent.push(statement.into());
        }
    }

    /// The timeouts `wait` was asked for, by store key. A holder whose key holds `never-ends`
    /// cannot end while the transaction is open (`wait` answers false); the others end.
    static WAITS: Mutex<Vec<(String, Duration)>> = Mutex::new(Vec::new());

    fn waits(key: &str) -> Vec<Duration> {
        let waits = WAITS.lock().unwrap();
        waits
            .iter()
            .filter(|(waited, _)| waited.ends_with(key))
            .map(|(_, timeout)| *timeout)
            .collect()
    }

    struct Records;

    impl Transactional for Scripted {
        type Store = Records;
    }

    impl TxStore<Scripted> for Records {
        type Transaction<'c>
            = &'c mut Scripted
        where
            Self: 'c;

        fn of(_: &StoreHandle, _: &str) -> Self {
            Records
        }

        fn in_transaction(&self, conn: &Scripted) -> bool {
            conn.depth > 0
        }

        fn begin<'a>(
            &'a self,
            conn: &'a mut Scripted,
            _: &'a str,
        ) -> TxFuture<'a, &'a mut Scripted> {
            conn.send(if conn.depth == 0 {
                "BEGIN"
            } else {
                "SAVEPOINT"
            });
            conn.depth += 1;
            Box::pin(async move { Ok(conn) })
        }

        fn commit<'a>(&'a self, tx: &'a mut Scripted, _: &'a str) -> TxFuture<'a, ()> {
            tx.depth -= 1;
            tx.send(if tx.depth == 0 {
                "COMMIT"
            } else {
                "RELEASE SAVEPOINT"
            });
            Box::pin(async { Ok(()) })
        }

        fn rollback<'a>(&'a self, tx: &'a mut Scripted, _: &'a str) -> TxFuture<'a, ()> {
            tx.depth -= 1;
            tx.send(if tx.depth == 0 {
                "ROLLBACK"
            } else {
                "ROLLBACK TO SAVEPOINT"
            });
            Box::pin(async { Ok(()) })
        }

        fn prepare<'a>(&'a self, conn: &'a mut Scripted, _: &'a str) -> TxFuture<'a, ()> {
            conn.send("prepare");
            Box::pin(async { Ok(()) })
        }

        fn claim<'a>(
            &'a self,
            conn: &'a mut Scripted,
            _: &'a str,
            _: &'a Claim,
            _: Duration,
            wait: Duration,
        ) -> TxFuture<'a, Claimed> {
            conn.send(format!("claim within {wait:?}"));
            let answer = conn
                .claims
                .pop_front()
                .expect("a claim the test did not script");
            Box::pin(async { Ok(answer) })
        }

        fn complete<'a>(
            &'a self,
            conn: &'a mut Scripted,
            _: &'a str,
            _: &'a Claim,
            _: &'a [u8],
            _: Duration,
        ) -> TxFuture<'a, bool> {
            conn.send("complete");
            let kept = conn.row_kept;
            Box::pin(async move { Ok(kept) })
        }

        fn release<'a>(
            &'a self,
            conn: &'a mut Scripted,
            _: &'a str,
            _: &'a Claim,
        ) -> TxFuture<'a, bool> {
            conn.send("release");
            Box::pin(async { Ok(true) })
        }

        fn wait<'a>(
            &'a self,
            key: &'a str,
            _: &'a Claim,
            timeout: Duration,
        ) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
            WAITS.lock().unwrap().push((key.to_owned(), timeout));
            Box::pin(async move { !key.contains("never-ends") })
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// A call of `key` with a wait of [`WAIT`] and no store: the records are the connection's.
    fn request(key: &str) -> CallRequest {
        CallRequest {
            scope: Cow::Borrowed("tx-engine"),
            key: key.to_owned(),
            ttl: None,
            lease: None,
            wait: Some(WAIT),
            fingerprint: None,
            store: None,
            heartbeat: false,
            step: false,
            abandoned: None,
        }
    }

    /// Runs a call of `key` on `conn` whose body returns `value`.
    async fn run<R, S: Codec<R>>(
        key: &str,
        conn: &mut Scripted,
        value: R,
        shape: S,
    ) -> Result<Outcome<R>, Error> {
        let body = async |conn: &mut Scripted| {
            conn.send("body");
            value
        };
        execute(request(key), conn, body, shape).await
    }

    fn held_by_another() -> Claimed {
        Claimed::Found(Record::InProgress(Claim::new(None)))
    }

    fn completed(value: u32) -> Claimed {
        let Disposition::Store(payload) = PlainCodec::new().seal(&value, None) else {
            unreachable!("a number is stored")
        };
        Claimed::Found(Record::Completed {
            payload,
            expires_in: None,
        })
    }

    fn sent(conn: &Scripted) -> Vec<&str> {
        conn.sent.iter().map(String::as_str).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_call_in_the_callers_transaction_claims_runs_and_completes() {
        let mut conn = Scripted::new(1, [Claimed::Held]);
        let ran = run("first", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap();
        assert_eq!((ran.value, ran.status), (7, Status::Executed));
        // Checked once, claimed within the whole wait, no savepoint for a value never released.
        assert_eq!(
            sent(&conn),
            ["prepare", "claim within 10s", "body", "complete"]
        );
        assert_eq!(conn.depth, 1, "the caller's transaction is left open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_call_on_a_bare_connection_commits_a_transaction_of_its_own() {
        let mut conn = Scripted::new(0, [Claimed::Held]);
        let ran = run("bare", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap();
        assert_eq!((ran.value, ran.status), (7, Status::Executed));
        assert_eq!(
            sent(&conn),
            [
                "BEGIN",
                "prepare",
                "claim within 10s",
                "body",
                "complete",
                "COMMIT"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_that_finds_no_claim_returns_the_value_not_stored() {
        let mut conn = Scripted {
            row_kept: false,
            ..Scripted::new(1, [Claimed::Held])
        };
        let ran = run("deleted", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap();
        assert_eq!((ran.value, ran.status), (7, Status::NotStored));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stored_result_is_replayed_and_the_body_never_runs() {
        let mut conn = Scripted::new(1, [completed(5)]);
        let ran = run("replayed", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap();
        assert_eq!((ran.value, ran.status), (5, Status::Replayed));
        assert_eq!(sent(&conn), ["prepare", "claim within 10s"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_error_in_the_callers_transaction_rolls_back_to_its_savepoint_and_deletes_the_claim()
     {
        let mut conn = Scripted::new(1, [Claimed::Held]);
        let failed: Result<u32, String> = Err("transient".into());
        let ran = run("released", &mut conn, failed, ResultCodec::new())
            .await
            .unwrap();
        assert_eq!(ran.status, Status::Executed);
        assert_eq!(ran.value, Err("transient".into()));
        assert_eq!(
            sent(&conn),
            [
                "prepare",
                "claim within 10s",
                "SAVEPOINT",
                "body",
                "ROLLBACK TO SAVEPOINT",
                "release"
            ]
        );
        assert_eq!(conn.depth, 1, "the caller's transaction stays usable");
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_error_on_a_bare_connection_rolls_its_own_transaction_back() {
        let mut conn = Scripted::new(0, [Claimed::Held]);
        let failed: Result<u32, String> = Err("transient".into());
        let ran = run("bare-released", &mut conn, failed, ResultCodec::new())
            .await
            .unwrap();
        assert_eq!(ran.value, Err("transient".into()));
        // The rollback undoes the claim and the body's writes: nothing is deleted, nothing kept.
        assert_eq!(
            sent(&conn),
            ["BEGIN", "prepare", "claim within 10s", "body", "ROLLBACK"]
        );
    }

    /// A shape that says it never releases (so no savepoint is taken), and then releases.
    struct Contrary;

    impl Codec<u32> for Contrary {
        fn seal(&mut self, _: &u32, _: Option<&Fingerprint>) -> Disposition {
            Disposition::Release
        }

        fn open(&self, _: &Envelope<'_>) -> Result<u32, String> {
            Err("never stored".into())
        }

        fn type_name(&self) -> &'static str {
            "u32"
        }

        fn may_release(&self) -> bool {
            false
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_without_a_savepoint_in_the_callers_transaction_deletes_the_claim_only() {
        let mut conn = Scripted::new(1, [Claimed::Held]);
        let ran = run("contrary", &mut conn, 7_u32, Contrary).await.unwrap();
        assert_eq!((ran.value, ran.status), (7, Status::Executed));
        assert_eq!(
            sent(&conn),
            ["prepare", "claim within 10s", "body", "release"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_blind_to_a_committed_claim_asks_again_up_to_its_bound() {
        let blind = || (0..UNSEEN_RETRIES).map(|_| Claimed::Unseen);
        // As many blind answers as the bound allows, then the key is seen held.
        let mut conn = Scripted::new(1, blind().chain([Claimed::Held]));
        let ran = run("blind", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap();
        assert_eq!((ran.value, ran.status), (7, Status::Executed));
        assert_eq!(conn.claims.len(), 0, "each scripted answer was asked for");

        // One more, and the call gives up rather than ask again.
        let mut conn = Scripted::new(1, blind().chain([Claimed::Unseen]));
        let error = run("blind-past", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InProgress { .. }), "{error}");
        assert!(!conn.sent.contains(&"body".to_owned()));

        // A record seen on a later look was waited for.
        let mut conn = Scripted::new(1, [Claimed::Unseen, completed(5)]);
        let ran = run("blind-replay", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap();
        assert_eq!((ran.value, ran.status), (5, Status::Waited));
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_outside_any_transaction_is_waited_for_within_the_calls_wait() {
        let mut conn = Scripted::new(1, [held_by_another(), Claimed::Held]);
        let ran = run("waits", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap();
        assert_eq!((ran.value, ran.status), (7, Status::Executed));
        assert_eq!(
            waits("waits"),
            [WAIT],
            "one wait, for what was left of the call's"
        );
        assert_eq!(
            sent(&conn),
            [
                "prepare",
                "claim within 10s",
                "claim within 10s",
                "body",
                "complete"
            ],
            "checked once, before the first claim"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_cannot_end_while_the_transaction_is_open_is_in_progress_at_once() {
        let mut conn = Scripted::new(1, [held_by_another()]);
        let error = run("never-ends", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InProgress { .. }), "{error}");
        assert_eq!(waits("never-ends"), [WAIT]);

        // A claim whose lock wait ran out on a transaction's claim: in progress, no wait.
        let mut conn = Scripted::new(1, [Claimed::Locked]);
        let error = run("locked", &mut conn, 7_u32, PlainCodec::new())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InProgress { .. }), "{error}");
        assert_eq!(waits("locked"), []);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_found_once_the_wait_is_over_is_in_progress_without_waiting() {
        let mut conn = Scripted::new(1, [held_by_another()]);
        let call = CallRequest {
            wait: Some(Duration::ZERO),
            ..request("no-wait")
        };
        let body = async |_: &mut Scripted| 7_u32;
        let error = execute(call, &mut conn, body, PlainCodec::new())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InProgress { .. }), "{error}");
        assert_eq!(waits("no-wait"), []);
        assert_eq!(sent(&conn), ["prepare", "claim within 0ns"]);
    }
}
