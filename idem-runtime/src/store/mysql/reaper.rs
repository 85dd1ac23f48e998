//! The reaper: deletes expired rows in bounded batches, in the background.
//!
//! An expired row is already absent to every operation (each statement compares `expires_at`
//! with the server's clock); the reaper only gives the space back. Each statement deletes at most
//! `batch` rows (the oldest first, by the index on `expires_at`), so no statement holds row
//! locks for long, and several processes can reap the same table. It stops when the store is
//! dropped.

use std::sync::Arc;
use std::time::Duration;

use sqlx::MySqlPool;
use tokio::task::AbortHandle;

use super::sql::{self, Statements};

/// A running reaper; dropping it stops the task.
pub(super) struct Reaper {
    task: Option<AbortHandle>,
}

impl Reaper {
    /// Starts reaping every `interval` (`None`: never), `batch` rows per statement, through
    /// `pool`, for as long as the result is kept.
    pub(super) fn start(
        pool: MySqlPool,
        sql: Arc<Statements>,
        interval: Option<Duration>,
        batch: u32,
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
                    match sql::reap(&pool, &sql, batch).await {
                        Ok(n) if n >= u64::from(batch) => tokio::task::yield_now().await,
                        Ok(n) => {
                            if n > 0 {
                                tracing::debug!(rows = n, "idem reaped expired MySQL records");
                            }
                            break;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "idem could not reap expired MySQL records; trying again later");
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
