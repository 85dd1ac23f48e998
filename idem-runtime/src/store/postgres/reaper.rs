//! The reaper: deletes expired rows in bounded batches, in the background.
//!
//! An expired row is already absent to every operation (each statement compares `expires_at`
//! with the database's clock); the reaper only gives the space back. Each statement deletes at
//! most `batch` rows, skipping rows another transaction holds, so it never takes long locks or
//! a long transaction, and several processes can reap the same table at once. It stops when
//! the store is dropped.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::AbortHandle;

use super::sql::{self, Statements};

/// A running reaper; dropping it stops the task.
pub(super) struct Reaper {
    task: Option<AbortHandle>,
}

impl Reaper {
    /// Starts reaping every `interval` (`None`: never), `batch` rows per statement, for as
    /// long as the result is kept.
    pub(super) fn start(
        pool: PgPool,
        sql: Arc<Statements>,
        interval: Option<Duration>,
        batch: u32,
        timeout: Duration,
    ) -> Reaper {
        let Some(interval) = interval else {
            return Reaper { task: None };
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Reaper { task: None };
        };
        let task = runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                // Batch after batch while they come back full, yielding between them.
                loop {
                    let reaped = tokio::time::timeout(
                        timeout,
                        sql::reap(&pool, &sql, i64::from(batch)),
                    )
                    .await;
                    match reaped {
                        Ok(Ok(n)) if n >= u64::from(batch) => tokio::task::yield_now().await,
                        Ok(Ok(n)) => {
                            if n > 0 {
                                tracing::debug!(rows = n, "idem reaped expired PostgreSQL records");
                            }
                            break;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "idem could not reap expired PostgreSQL records; trying again later");
                            break;
                        }
                        Err(_) => {
                            tracing::debug!("idem's reaper timed out; trying again later");
                            break;
                        }
                    }
                }
            }
        });
        Reaper {
            task: Some(task.abort_handle()),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
