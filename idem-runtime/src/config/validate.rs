//! [`Config::validate`]: the settings that have limits, and the store URL's scheme, which the
//! store registry must know.

use crate::error::Error;
use crate::store::registry::{self, Connector};

use super::{Config, MAX_PREFIX_BYTES, at_least_1ms, bad_var, check_lease, check_ttl};

impl Config {
    /// Checks the values that have limits, and that the store URL's scheme is built in or
    /// registered ([`register_scheme`](crate::store::registry::register_scheme));
    /// [`init`](crate::init) calls it.
    pub fn validate(&self) -> Result<(), Error> {
        self.checked().map(drop)
    }

    /// Checks what [`validate`](Config::validate) checks, and returns the constructor the
    /// registry holds for the store URL's scheme: what [`Idem::connect`](crate::Idem::connect)
    /// runs.
    pub(crate) fn checked(&self) -> Result<Connector, Error> {
        let connector = check_store(&self.store, "store")?;
        if self.prefix.is_empty()
            || self.prefix.len() > MAX_PREFIX_BYTES
            || self.prefix.chars().any(char::is_control)
        {
            return Err(Error::Config(format!(
                "prefix `{}` is not valid; expected 1 to {MAX_PREFIX_BYTES} bytes of printable text",
                self.prefix.escape_debug()
            )));
        }
        if self.pool_size == Some(0) || self.memory_capacity == 0 {
            return Err(Error::Config(
                "pool_size and memory_capacity must be greater than 0".into(),
            ));
        }
        check_ttl(self.ttl)?;
        check_lease(self.lease)?;
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(Error::Config("timeouts must be greater than 0".into()));
        }
        if self.min_replicas > 0 {
            // `WAIT n 0` would block until the replicas answer, however long that takes.
            at_least_1ms(
                "replica_timeout",
                "`WAIT` with no timeout blocks until the replicas answer",
                self.replica_timeout,
            )?;
        }
        Ok(connector)
    }
}

/// The registry's constructor for the scheme of the store URL `url`, or the error naming the
/// setting `name` it came from and what it may be.
pub(super) fn check_store(url: &str, name: &str) -> Result<Connector, Error> {
    registry::find(url).ok_or_else(|| bad_var(name, url, &registry::expected()))
}
