//! How redis-rs and connection errors become [`StoreError`]s.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::{StoreError, StoreErrorKind};

use super::connections::NoConnection;

/// Whether the connection that reported `error` must be replaced.
pub(super) fn breaks_connection(error: &RedisError) -> bool {
    error.is_unrecoverable_error() || error.is_io_error()
}

/// Whether an operation that failed with `error` on a single-server connection is sent once
/// more, on a new connection: the connection was found closed (its socket or its driver gone)
/// before the answer came. Not a timeout (the server may be alive and slow, and a timed-out
/// claim is undone instead), not an error the server answered.
///
/// Sending an operation twice is safe for every operation of the store, even if the first one
/// reached the server: a claim that finds its own token counts as claimed, a completion that
/// finds its own result counts as held (see `scripts.rs`), a renewal extends the lease again, a
/// release that finds the key already gone reports a lost fence (which a release ignores), and
/// the look at a lease only reads.
pub(super) fn resend(error: &RedisError) -> bool {
    error.is_connection_dropped() && !error.is_timeout()
}

/// Whether `error` is the server refusing the credentials.
pub(super) fn is_auth(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// Whether `error` is a server refusing cluster commands: `redis+cluster://` naming a server
/// that is not in a Redis Cluster.
pub(super) fn is_not_a_cluster(error: &RedisError) -> bool {
    error.to_string().contains("cluster support disabled")
}

/// The store error for a write that fewer than `min_replicas` replicas acknowledged in time.
pub(super) fn not_replicated(
    url: &str,
    what: &str,
    acked: i64,
    wanted: usize,
    within: Duration,
) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!(
            "Redis at {url} stored the {what}, but only {acked} of the {wanted} replicas that \
             min_replicas asks for acknowledged it within {within:?} (replica_timeout); a \
             failover could lose it"
        ),
    )
}

/// The store error for a failed command on the Redis at `url`.
pub(super) fn command(error: RedisError, url: &str) -> StoreError {
    let kind = kind_of(&error);
    let message = match kind {
        StoreErrorKind::Unavailable => format!("Redis at {url} is unavailable"),
        StoreErrorKind::Timeout => format!("Redis at {url} timed out"),
        StoreErrorKind::Full => format!("Redis at {url} is out of memory"),
        StoreErrorKind::Protocol => format!("Redis at {url} answered something unexpected"),
        _ => format!("Redis at {url} failed the command"),
    };
    StoreError::new(kind, message).with_source(error)
}

/// The store error for a command that did not answer within `after`.
pub(super) fn timed_out(url: &str, after: Duration) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        format!("Redis at {url} did not answer within {after:?} (command_timeout)"),
    )
}

/// The store error for a connection to the Redis at `url` that could not be made.
pub(super) fn no_connection(error: NoConnection, url: &str) -> StoreError {
    match error {
        NoConnection::TimedOut(within) => StoreError::new(
            StoreErrorKind::Timeout,
            format!("connecting to Redis at {url} took longer than {within:?} (connect_timeout)"),
        ),
        NoConnection::Failed(error) => {
            let kind = match kind_of(&error) {
                StoreErrorKind::Timeout => StoreErrorKind::Timeout,
                _ => StoreErrorKind::Unavailable,
            };
            let message = if not_redis(&error) {
                format!(
                    "the server at {url} accepted the connection but did not answer as Redis: is \
                     the URL's port another service's (PostgreSQL, HTTP, …) or a TLS port \
                     (rediss://)?"
                )
            } else {
                format!("cannot connect to Redis at {url}")
            };
            StoreError::new(kind, message).with_source(error)
        }
        #[cfg(feature = "deadpool-redis")]
        NoConnection::Pool(unpooled) => unpooled.store_error(url),
    }
}

/// Whether `error`, met while connecting, says that something listens at the address but does
/// not speak Redis: it closed the connection at the first command, or answered bytes that are no
/// Redis reply (a refused or unreachable address is not that).
fn not_redis(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Parse
        || (error.is_connection_dropped() && !error.is_connection_refusal() && !error.is_timeout())
}

fn kind_of(error: &RedisError) -> StoreErrorKind {
    if error.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
        return StoreErrorKind::Unavailable;
    }
    match error.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        )
        | ErrorKind::AuthenticationFailed => StoreErrorKind::Unavailable,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreErrorKind::Protocol,
        _ if error.code() == Some("OOM") => StoreErrorKind::Full,
        _ if error.code() == Some("WRONGTYPE") => StoreErrorKind::Protocol,
        _ => StoreErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn operations_are_sent_again_after_a_closed_connection_only() {
        let io = |kind: io::ErrorKind| RedisError::from(io::Error::from(kind));
        for kind in [
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::NotConnected,
        ] {
            assert!(resend(&io(kind)), "{kind:?}");
        }
        assert!(!resend(&io(io::ErrorKind::TimedOut)));
        let answered = RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT"));
        assert!(!resend(&answered));
    }

    #[test]
    fn a_closed_or_garbled_first_answer_is_not_redis_and_a_refusal_is_not_that() {
        let io = |kind: io::ErrorKind| RedisError::from(io::Error::from(kind));
        for kind in [
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
        ] {
            assert!(not_redis(&io(kind)), "{kind:?}");
        }
        for kind in [io::ErrorKind::ConnectionRefused, io::ErrorKind::TimedOut] {
            assert!(!not_redis(&io(kind)), "{kind:?}");
        }
        let refused = no_connection(
            NoConnection::Failed(io(io::ErrorKind::ConnectionRefused)),
            "redis://h:1/0",
        );
        assert!(
            refused
                .to_string()
                .starts_with("cannot connect to Redis at redis://h:1/0")
        );
        let closed = no_connection(
            NoConnection::Failed(io(io::ErrorKind::BrokenPipe)),
            "redis://h:1/0",
        );
        assert!(
            closed.to_string().contains("did not answer as Redis"),
            "{closed}"
        );
    }
}
