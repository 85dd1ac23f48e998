//! The state machine of a call in transactional mode (`tx = conn`, PostgreSQL): the claim and
//! the result are written through the caller's connection, inside its transaction, so that
//! they commit or roll back with the body's own writes.
//!
//! No lease is renewed and no heartbeat runs: the claim's row is invisible to every other
//! transaction until the caller commits, and by then it is completed. A concurrent duplicate
//! waits on PostgreSQL's lock on the key (its upsert waits for the claiming transaction to
//! end), bounded by `wait`. The claim's `expires_at` (now + lease) is only a backstop, for a
//! caller that commits a claim its call never completed (a panic or a dropped call).
//!
//! Statements, besides the body's own:
//! - a replay: 1 (the claim, which reads the record);
//! - a first call of a plain `T`, or of a `Result` whose every error is stored: 2 (claim,
//!   complete);
//! - a first call of a `Result` whose errors may be released: 4 (claim, `SAVEPOINT`, complete,
//!   `RELEASE SAVEPOINT`); a released error: claim, `SAVEPOINT`, `ROLLBACK TO SAVEPOINT`,
//!   delete of the claim;
//! - on a connection outside any transaction, `BEGIN` and `COMMIT` (or `ROLLBACK`) around
//!   these, and no savepoint: a released error rolls the whole call back;
//! - once per table and process, before the first claim: a `to_regclass` look for the table,
//!   so that a missing one is an error that leaves the caller's transaction usable.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Ran, checked, counted_error, ended, mismatch, open, span_of};
use crate::codec::{self, Seal, Shape};
use crate::context::Idem;
use crate::engine::Request;
use crate::error::Error;
use crate::key;
use crate::observe::{Outcome as Counted, StoreOp, timed};
use crate::outcome::{Outcome, Status};
use crate::record::{Claim, Record};
use crate::store::postgres::tx::{Claimed, TxRecords};

/// How often a claim asks again when a concurrent claim committed the key after its snapshot.
const UNSEEN_RETRIES: u32 = 8;

/// Runs `body` once for the call's key, with the claim and the result written through `conn`.
pub(crate) async fn execute<R, B, S>(
    call: Request,
    conn: &mut PgConnection,
    body: B,
    shape: S,
) -> Result<Outcome<R>, Error>
where
    B: AsyncFnOnce(&mut PgConnection) -> R,
    S: Shape<R>,
{
    // The records live in the caller's database: a call needs no installed store, and then
    // runs with the default settings.
    let (key, ttl, lease, wait, store) = Idem::with_current_or_unconfigured(|current| {
        let settings = &current.settings;
        let key = key::store_key(&settings.prefix, &call.scope, &call.key, settings.hash_keys);
        let store = call.store.as_ref().unwrap_or(&current.store);
        (
            key,
            settings.ttl,
            settings.lease,
            settings.wait,
            TxRecords::of(store),
        )
    });
    store.remember(&call.scope);
    let span = span_of(&call.scope, &key);
    let ttl = call.ttl.unwrap_or(ttl);
    let lease = call.lease.unwrap_or(lease);
    let checked = checked(call.fingerprint, &key, ttl, lease);
    let result = match checked {
        Err(error) => Err(error),
        Ok(fingerprint) => {
            let run = TxRun {
                records: store,
                claim: Claim::new(fingerprint),
                key,
                ttl,
                lease,
                wait: call.wait.unwrap_or(wait),
            };
            if span.is_disabled() {
                Box::pin(run.go(conn, body, shape)).await
            } else {
                Box::pin(run.go(conn, body, shape).instrument(span.clone())).await
            }
        }
    };
    let counted = match &result {
        Ok(ran) => ran.counted,
        Err(error) => counted_error(error),
    };
    ended(&span, &call.scope, counted);
    result.map(|ran| ran.outcome)
}

/// One call, resolved against its table and settings.
struct TxRun {
    records: TxRecords,
    key: String,
    claim: Claim,
    ttl: Duration,
    lease: Duration,
    wait: Duration,
}

/// The bytes to store for a body's value.
struct Sealed {
    bytes: Vec<u8>,
    /// The value could not be stored: `bytes` say why.
    unstorable: bool,
}

/// How the body's run ended, for the transaction around it.
enum Ended<R> {
    /// Keep what the call wrote.
    Kept(Ran<R>),
    /// The body's error is not stored: undo what the call wrote.
    Released(Ran<R>),
}

impl TxRun {
    async fn go<R, B, S>(self, conn: &mut PgConnection, body: B, shape: S) -> Result<Ran<R>, Error>
    where
        B: AsyncFnOnce(&mut PgConnection) -> R,
        S: Shape<R>,
    {
        if conn.is_in_transaction() {
            return match self.run(conn, body, shape, true).await? {
                Ended::Kept(ran) | Ended::Released(ran) => Ok(ran),
            };
        }
        // A connection outside any transaction gets one of its own for the call.
        let mut own = conn
            .begin()
            .await
            .map_err(|error| self.records.failed(&self.key, error))?;
        // Dropped on an error (or with the call's future): sqlx rolls it back.
        match self.run(&mut own, body, shape, false).await? {
            Ended::Kept(ran) => {
                own.commit()
                    .await
                    .map_err(|error| self.records.failed(&self.key, error))?;
                Ok(ran)
            }
            Ended::Released(ran) => {
                own.rollback()
                    .await
                    .map_err(|error| self.records.failed(&self.key, error))?;
                Ok(ran)
            }
        }
    }

    /// The call inside a transaction: claim or replay, then the body and its record. With
    /// `savepoint`, a body whose error may be released runs after a `SAVEPOINT`, so that the
    /// release undoes its writes and leaves the caller's transaction usable.
    async fn run<R, B, S>(
        &self,
        conn: &mut PgConnection,
        body: B,
        mut shape: S,
        savepoint: bool,
    ) -> Result<Ended<R>, Error>
    where
        B: AsyncFnOnce(&mut PgConnection) -> R,
        S: Shape<R>,
    {
        if let Some(replayed) = self.claim_or_replay(conn, &shape).await? {
            return Ok(Ended::Kept(replayed));
        }
        if savepoint && shape.may_release() {
            let mut inner = conn
                .begin()
                .await
                .map_err(|error| self.records.failed(&self.key, error))?;
            let value = body(&mut inner).await;
            return match self.sealed(&value, &mut shape) {
                None => {
                    inner
                        .rollback()
                        .await
                        .map_err(|error| self.records.failed(&self.key, error))?;
                    self.release(conn).await?;
                    Ok(Ended::Kept(Ran::new(value, Status::Executed)))
                }
                Some(sealed) => {
                    let ran = self.store(&mut inner, value, sealed).await?;
                    inner
                        .commit()
                        .await
                        .map_err(|error| self.records.failed(&self.key, error))?;
                    Ok(Ended::Kept(ran))
                }
            };
        }
        let value = body(conn).await;
        match self.sealed(&value, &mut shape) {
            // Without a savepoint, in a transaction of our own: rolling it back undoes the
            // claim and the body's writes together.
            None if !savepoint => Ok(Ended::Released(Ran::new(value, Status::Executed))),
            // A shape that said it never releases: the claim goes, the writes stay.
            None => {
                self.release(conn).await?;
                Ok(Ended::Kept(Ran::new(value, Status::Executed)))
            }
            Some(sealed) => self.store(conn, value, sealed).await.map(Ended::Kept),
        }
    }

    /// What to store for `value`, or `None` to release the claim.
    fn sealed<R, S: Shape<R>>(&self, value: &R, shape: &mut S) -> Option<Sealed> {
        let fingerprint = self.claim.fingerprint.as_ref();
        match shape.seal(value, fingerprint) {
            Seal::Release => None,
            Seal::Store(bytes) => Some(Sealed {
                bytes,
                unstorable: false,
            }),
            Seal::Unstorable(reason) => {
                tracing::error!(key = %self.key, %reason, type_name = shape.type_name(), "idem cannot store the result so that it reads back as its type; it is returned to this call only, and later calls with its key get Error::Unstorable");
                Some(Sealed {
                    bytes: codec::seal_unstorable(fingerprint, shape.type_name(), &reason),
                    unstorable: true,
                })
            }
        }
    }

    /// Claims the key, or replays its record, or waits for the transaction that holds it;
    /// `None` when the key is this call's.
    async fn claim_or_replay<R, S: Shape<R>>(
        &self,
        conn: &mut PgConnection,
        shape: &S,
    ) -> Result<Option<Ran<R>>, Error> {
        let deadline = Instant::now() + self.wait;
        let mut waited = false;
        let mut unseen = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let claimed = timed(
                StoreOp::Claim,
                self.records
                    .claim(conn, &self.key, &self.claim, self.lease, left),
            )
            .await?;
            let holder = match claimed {
                Claimed::Held => return Ok(None),
                Claimed::Found(Record::Completed { payload, .. }) => {
                    let status = if waited {
                        Status::Waited
                    } else {
                        Status::Replayed
                    };
                    let value = open(&self.key, self.claim.fingerprint.as_ref(), &payload, shape)?;
                    return Ok(Some(Ran::new(value, status)));
                }
                Claimed::Found(Record::InProgress(holder)) => holder,
                // Not an answer of the transactional claim (its lock wait running out is
                // `Error::InProgress` already), the same if it were.
                Claimed::Locked => {
                    return Err(Error::InProgress {
                        key: self.key.clone(),
                    });
                }
                // The claim waited for another transaction's, committed after its snapshot:
                // a new statement sees it (under READ COMMITTED; stricter levels fail with a
                // serialization error instead).
                Claimed::Unseen => {
                    unseen += 1;
                    if unseen > UNSEEN_RETRIES {
                        return Err(Error::InProgress {
                            key: self.key.clone(),
                        });
                    }
                    waited = true;
                    continue;
                }
            };
            // Held by a call outside any transaction (the plain store): wait as it would.
            if mismatch(self.claim.fingerprint.as_ref(), holder.fingerprint.as_ref()) {
                return Err(Error::KeyMismatch {
                    key: self.key.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::InProgress {
                    key: self.key.clone(),
                });
            }
            timed(StoreOp::Wait, async {
                self.records.wait(&self.key, &holder, deadline - now).await;
                Ok::<(), Error>(())
            })
            .await?;
            waited = true;
        }
    }

    /// Stores what the body returned, as the plain store would.
    async fn store<R>(
        &self,
        conn: &mut PgConnection,
        value: R,
        sealed: Sealed,
    ) -> Result<Ran<R>, Error> {
        let held = timed(
            StoreOp::Complete,
            self.records
                .complete(conn, &self.key, &self.claim, &sealed.bytes, self.ttl),
        )
        .await?;
        if !held {
            tracing::warn!(key = %self.key, "idem's claim was deleted inside the transaction before its completion; the result is returned but not stored");
            return Ok(Ran::new(value, Status::NotStored));
        }
        if sealed.unstorable {
            return Ok(Ran {
                counted: Counted::Unstorable,
                ..Ran::new(value, Status::NotStored)
            });
        }
        Ok(Ran::new(value, Status::Executed))
    }

    async fn release(&self, conn: &mut PgConnection) -> Result<(), Error> {
        timed(
            StoreOp::Release,
            self.records.release(conn, &self.key, &self.claim),
        )
        .await
        .map(|_| ())
    }
}
