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
use crate::store::tx::{Claimed, Transactional, TxStore, UNSEEN_RETRIES};

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
        // at the connection's next use, as sqlx does).
        let mut own = self.store.begin(conn, key).await?;
        let ended = match self.run(&mut *own, body, shape, false).await {
            Ok(ended) => ended,
            Err(error) => {
                // The call's error is the one to report; a failed rollback leaves the
                // connection to sqlx, which rolls back at its next use.
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
            let value = self.frame.in_body(body(&mut *inner), false).await;
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
        let value = self.frame.in_body(body(conn), false).await;
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
            let claimed = timed(StoreOp::Claim, async {
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
            if !timed(StoreOp::Wait, store.wait(key, &holder, deadline - now)).await {
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
            StoreOp::Release,
            self.store.release(conn, &self.frame.key, &self.claim),
        )
        .await
        .map(|_| ())
    }
}
