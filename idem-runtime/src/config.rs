//! [`Config`]: which store idem uses and how, from code, the environment or a config file.
//!
//! This file holds the settings, their defaults (written here once: each backend's options
//! start from them) and their builders; `env.rs` reads them from the `IDEM_*` variables, and
//! `validate.rs` checks them, asking the store registry (`store/registry.rs`) for the store
//! URL's scheme.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::Error;

mod env;
mod validate;

/// What a call does when the store is unavailable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse the call with [`Error::Store`]; the body does not run. The default: a charge that
    /// cannot be protected is not made.
    #[default]
    Closed,
    /// Run the body without protection, with a warning and the `fail_open` counter.
    Open,
}

/// The configuration of idem, given to [`init`](crate::init) once at start-up.
///
/// Build it in code, read it from the `IDEM_*` environment variables with
/// [`Config::from_env`], or deserialize it from an application's own config file (durations
/// are strings such as `"30s"`):
///
/// ```
/// # use idem_runtime as idem;
/// let config = idem::Config::default()
///     .store("memory")
///     .prefix("shop")
///     .hash_keys(true);
/// assert_eq!(config.store, "memory");
///
/// let from_file: idem::Config =
///     serde_json::from_str(r#"{ "store": "memory", "ttl": "7d", "fail_mode": "open" }"#).unwrap();
/// assert_eq!(from_file.ttl, std::time::Duration::from_secs(7 * 24 * 3600));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The store: `memory`, `redis://…`, `rediss://…`, `redis+cluster://…`,
    /// `postgres://…`, or a URL whose scheme was registered with
    /// [`register_scheme`](crate::store::registry::register_scheme).
    pub store: String,
    /// The first part of every key.
    pub prefix: String,
    /// What a call does when the store is unavailable.
    pub fail_mode: FailMode,
    /// What a call does when it finds an abandoned attempt, for functions that choose no
    /// policy; `None` (the default) marks no attempts. See [`Config::abandoned`].
    pub abandoned: Option<crate::Abandoned>,
    /// Whether every key is stored as its SHA-256.
    pub hash_keys: bool,
    /// How many connections the Redis store keeps; `None` (the default) picks for the
    /// deployment: 1 for one server, 16 for a Redis Cluster.
    ///
    /// To one server, connections are multiplexed and shared by every call at once: any
    /// number of commands are in flight on one, so one is enough until its driver task fills
    /// a core, and one batches writes and reads better than several (BENCHMARKS.md has the
    /// figures). To a Cluster, each connection
    /// carries one operation at a time, so this is also how many operations are in flight:
    /// redis-rs follows an `ASK` redirection (a slot being migrated) with an `ASKING` command
    /// sent on its own, which another operation's command sharing the connection could take.
    ///
    /// To PostgreSQL (default 10), each connection carries one statement at a time.
    pub pool_size: Option<usize>,
    #[serde(deserialize_with = "duration_text")]
    /// How long connecting to the store may take.
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration_text")]
    /// How long one store command may take.
    pub command_timeout: Duration,
    /// How many records the memory store holds at most.
    pub memory_capacity: usize,
    #[serde(deserialize_with = "duration_text")]
    /// The retention of completed results, for functions that set no `ttl`.
    pub ttl: Duration,
    #[serde(deserialize_with = "duration_text")]
    /// The lease, for functions that set no `lease`.
    pub lease: Duration,
    #[serde(deserialize_with = "duration_text")]
    /// The wait, for functions that set no `wait`.
    pub wait: Duration,
    /// How many replicas must acknowledge a claim or a result before the Redis store counts
    /// it as stored; `0` (the default) does not wait. See [`Config::min_replicas`].
    pub min_replicas: usize,
    #[serde(deserialize_with = "duration_text")]
    /// How long a write waits for `min_replicas` replicas. See [`Config::replica_timeout`].
    pub replica_timeout: Duration,
    /// How many completed records this process keeps in its local cache, in front of the
    /// store; `0` turns the cache off. See [`Config::local_cache`].
    pub local_cache: usize,
    /// Whether the Redis store accepts a server that can evict records (`maxmemory` with a
    /// policy other than `noeviction`); `false` (the default) refuses it. See
    /// [`Config::allow_eviction`].
    pub allow_eviction: bool,
    /// The schema of the PostgreSQL store's table.
    pub pg_schema: String,
    /// The PostgreSQL store's table.
    pub pg_table: String,
    /// Whether connecting to PostgreSQL creates the table when it is missing.
    pub pg_create_table: bool,
    /// Whether the PostgreSQL store is reached through a transaction-mode pooler (PgBouncer):
    /// no prepared statements. See [`Config::pg_pooler`].
    pub pg_pooler: bool,
    /// Whether the time of each store operation is recorded in the `idem_store_seconds`
    /// histogram; `true` by default. See [`Config::store_latency`].
    pub store_latency: bool,
}

/// The one place the defaults are written: `RedisOptions::default()`,
/// `PostgresOptions::default()` and `MemoryStore::new()` start from them.
impl Default for Config {
    fn default() -> Self {
        Config {
            store: "memory".to_owned(),
            prefix: "idem".to_owned(),
            fail_mode: FailMode::Closed,
            abandoned: None,
            hash_keys: false,
            pool_size: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            memory_capacity: MEMORY_CAPACITY,
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
            local_cache: 0,
            allow_eviction: false,
            pg_schema: "public".to_owned(),
            pg_table: "idem_records".to_owned(),
            store_latency: true,
            pg_create_table: true,
            pg_pooler: false,
        }
    }
}

impl Config {
    /// The store: `memory`, `redis://…`, `rediss://…`, `redis+cluster://…`,
    /// `postgres://…`, or a URL whose scheme was registered with
    /// [`register_scheme`](crate::store::registry::register_scheme).
    pub fn store(mut self, url: impl Into<String>) -> Self {
        self.store = url.into();
        self
    }

    /// The first part of every key, so that services sharing a store keep apart.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// What a call does when the store is unavailable.
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// What every call that chooses no policy does when it finds an abandoned attempt of its
    /// key (see [`Abandoned`](crate::Abandoned)): each call that runs its body then marks its
    /// attempt in the store first, one more round trip, and its body knows the attempt's
    /// number. Unset, calls mark nothing and re-run an abandoned attempt's body.
    pub fn abandoned(mut self, policy: crate::Abandoned) -> Self {
        self.abandoned = Some(policy);
        self
    }

    /// Store every key as its SHA-256 (no personal data in the store's key space).
    pub fn hash_keys(mut self, on: bool) -> Self {
        self.hash_keys = on;
        self
    }

    /// How many connections the store keeps; see [`Config::pool_size`](Config#structfield.pool_size).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// How long connecting to the store may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one store command may take before it is [`Error::Store`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How many records the memory store holds at most; when full it refuses new claims.
    pub fn memory_capacity(mut self, records: usize) -> Self {
        self.memory_capacity = records;
        self
    }

    /// The retention of completed results for functions that set no `ttl`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The lease for functions that set no `lease`.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The wait for functions that set no `wait`.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How many replicas must acknowledge a claim or a result before the Redis store counts it
    /// as stored (`WAIT`, sent in the same round trip as the write); `0`, the default, does not
    /// wait.
    ///
    /// Redis replicates asynchronously, so without it a failover can lose a claim or a result
    /// that the master acknowledged but had not yet sent to the replica that takes over: the
    /// key can then run again. With it, a claim that too few replicas acknowledged within
    /// [`replica_timeout`](Config::replica_timeout) is withdrawn and the call fails with
    /// [`Error::Store`] (the body does not run), and a result that too few acknowledged is
    /// returned to the caller but reported as not stored. Every claim and completion then
    /// waits for a replica's acknowledgement, and calls fail while fewer replicas than this are
    /// connected. The memory store ignores it.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// # use std::time::Duration;
    /// let config = idem::Config::default()
    ///     .store("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")
    ///     .min_replicas(1)
    ///     .replica_timeout(Duration::from_millis(250));
    /// assert_eq!(config.min_replicas, 1);
    /// ```
    pub fn min_replicas(mut self, replicas: usize) -> Self {
        self.min_replicas = replicas;
        self
    }

    /// How long a claim or a completion waits for [`min_replicas`](Config::min_replicas)
    /// replicas to acknowledge it; at least 1 ms. Operations that wait may take this much
    /// longer than `command_timeout`.
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// Keeps up to `entries` completed records in this process, in front of the store, so
    /// that replaying a recent result costs no round trip; `0` (the default) turns the local
    /// cache off.
    ///
    /// A cached record is never replayed after the store's record has expired: its lifetime
    /// is counted from before the store was asked for it. Only completed records are cached
    /// (a call in progress is always looked up in the store), and a replay from the cache is
    /// checked against the caller's fingerprint like a replay from the store. The cache
    /// serves the calls that run on the configured store; a call given another store (the
    /// `store =` option, [`with_store`](crate::with_store)) skips it.
    ///
    /// The price: a record removed from the store by anything but its expiry (`DEL`,
    /// `FLUSHDB`, eviction, a restart without persistence) is still replayed by a process that
    /// cached it, until the record would have expired.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let config = idem::Config::default().local_cache(10_000);
    /// assert_eq!(config.local_cache, 10_000);
    /// ```
    pub fn local_cache(mut self, entries: usize) -> Self {
        self.local_cache = entries;
        self
    }

    /// Accepts a Redis that can evict records (`IDEM_ALLOW_EVICTION=1`); off by default.
    ///
    /// A Redis with `maxmemory` set and any `maxmemory-policy` but `noeviction` evicts records
    /// when it is full, idem's too (each has an expiry, so the `volatile-*` policies pick them
    /// as well): an evicted claim or result lets its call run again, silently. So
    /// `RedisStore::connect` (and so [`init`](crate::init)) reads `maxmemory` and
    /// `maxmemory_policy` from `INFO memory` of the server (of every master of a Cluster) and
    /// refuses such a server with [`Error::Config`]. With this on, it connects and logs one
    /// warning instead. The memory store ignores it.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let config = idem::Config::default()
    ///     .store("redis://cache.internal:6379/0")
    ///     .allow_eviction(true);
    /// assert!(config.allow_eviction);
    /// ```
    pub fn allow_eviction(mut self, allow: bool) -> Self {
        self.allow_eviction = allow;
        self
    }

    /// The schema of the PostgreSQL store's table (`public` by default).
    pub fn pg_schema(mut self, schema: impl Into<String>) -> Self {
        self.pg_schema = schema.into();
        self
    }

    /// The PostgreSQL store's table (`idem_records` by default).
    pub fn pg_table(mut self, table: impl Into<String>) -> Self {
        self.pg_table = table.into();
        self
    }

    /// Whether connecting to PostgreSQL creates a missing table (the default); when off, a
    /// missing table is [`Error::Config`] naming the SQL to run.
    pub fn pg_create_table(mut self, create: bool) -> Self {
        self.pg_create_table = create;
        self
    }

    /// Whether the PostgreSQL store reaches its database through a pooler in transaction mode
    /// (PgBouncer's `pool_mode = transaction`), where prepared statements do not work: `true`
    /// sends every statement with its values written in, by the simple query protocol
    /// ([`PostgresOptions::pooler`](crate::PostgresOptions#structfield.pooler)). `false` by
    /// default; `IDEM_PG_POOLER`.
    pub fn pg_pooler(mut self, pooler: bool) -> Self {
        self.pg_pooler = pooler;
        self
    }

    /// Whether the time of each store operation is recorded in the `idem_store_seconds`
    /// histogram (`true` by default; `IDEM_STORE_LATENCY`). Off, a store operation reads no
    /// clock and touches no histogram: for a service that installs no `metrics` recorder (the
    /// `metrics` crate cannot tell idem whether one is installed, so idem would time every
    /// operation for nothing) or does not read this histogram. The `idem_calls_total` counter
    /// is kept either way.
    pub fn store_latency(mut self, on: bool) -> Self {
        self.store_latency = on;
        self
    }
}

/// The memory store's default capacity, in records
/// ([`store::memory::DEFAULT_CAPACITY`](crate::store::memory::DEFAULT_CAPACITY)).
pub(crate) const MEMORY_CAPACITY: usize = 100_000;

/// The longest prefix: it starts every store key.
const MAX_PREFIX_BYTES: usize = 64;

/// The shortest lease: it is renewed every `lease / 3`, and stores count in whole
/// milliseconds. The attribute checks its literals against the same minimum, with the same
/// words.
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(3);

/// A ttl must be at least a millisecond: stores expire by whole milliseconds and a record
/// never lives without an expiry. The attribute checks its literals with the same words.
pub(crate) fn check_ttl(value: Duration) -> Result<(), Error> {
    at_least_1ms(
        "ttl",
        "a completed record always expires, and stores expire in whole milliseconds",
        value,
    )
}

fn at_least_1ms(what: &str, why: &str, value: Duration) -> Result<(), Error> {
    if value < Duration::from_millis(1) {
        return Err(Error::Config(format!(
            "`{what}` must be at least 1ms: {why} (got {value:?})"
        )));
    }
    Ok(())
}

/// A lease must be at least [`MIN_LEASE`].
pub(crate) fn check_lease(value: Duration) -> Result<(), Error> {
    if value < MIN_LEASE {
        return Err(Error::Config(format!(
            "`lease` must be at least 3ms: a lease is renewed every lease / 3 while the body runs (got {value:?})"
        )));
    }
    Ok(())
}

/// The error of a setting `name` whose `value` is not one of what is `expected`.
fn bad_var(name: &str, value: &str, expected: &str) -> Error {
    Error::Config(format!(
        "{name}=`{value}` is not valid; expected {expected}"
    ))
}

fn duration_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration; expected one such as `250ms`, `30s`, `24h` or `7d`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn environment_overrides_defaults() {
        let config = from(&[
            ("IDEM_STORE", "redis://127.0.0.1:7000/1"),
            ("IDEM_PREFIX", "shop"),
            ("IDEM_FAIL_MODE", "open"),
            ("IDEM_POOL_SIZE", "4"),
            ("IDEM_COMMAND_TIMEOUT", "250ms"),
            ("IDEM_TTL", "7d"),
            ("IDEM_ABANDONED", "Fail"),
        ])
        .unwrap();
        assert_eq!(config.abandoned, Some(crate::Abandoned::Fail));
        assert_eq!(config.store, "redis://127.0.0.1:7000/1");
        assert_eq!(config.prefix, "shop");
        assert_eq!(config.fail_mode, FailMode::Open);
        assert_eq!(config.pool_size, Some(4));
        assert_eq!(config.command_timeout, Duration::from_millis(250));
        assert_eq!(config.ttl, Duration::from_secs(7 * 86400));
        assert_eq!(from(&[]).unwrap(), Config::default());
    }

    #[test]
    fn malformed_variables_name_the_variable_and_the_forms() {
        for (name, value, expect) in [
            ("IDEM_STORE", "mongodb://x", "redis+cluster://"),
            ("IDEM_FAIL_MODE", "sometimes", "`closed` or `open`"),
            ("IDEM_POOL_SIZE", "0", "greater than 0"),
            ("IDEM_TTL", "forever", "`24h`"),
            ("IDEM_HASH_KEYS", "maybe", "`true` or `false`"),
            ("IDEM_ABANDONED", "retry", "`rerun` or `fail`"),
        ] {
            let error = from(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(value), "{error}");
            assert!(error.contains(expect), "{error}");
        }
    }

    #[test]
    fn deserializes_from_a_config_file() {
        let config: Config =
            serde_json::from_str(r#"{"store":"memory","lease":"5s","hash_keys":true}"#).unwrap();
        assert_eq!(config.lease, Duration::from_secs(5));
        assert!(config.hash_keys);
        let error = serde_json::from_str::<Config>(r#"{"ttl":"soon"}"#).unwrap_err();
        assert!(
            error.to_string().contains("`soon` is not a duration"),
            "{error}"
        );
        assert!(serde_json::from_str::<Config>(r#"{"stroe":"memory"}"#).is_err());
    }

    #[test]
    fn local_cache_is_off_by_default_and_set_by_env_file_or_code() {
        assert_eq!(Config::default().local_cache, 0);
        assert_eq!(
            from(&[("IDEM_LOCAL_CACHE", "5000")]).unwrap().local_cache,
            5000
        );
        assert_eq!(from(&[("IDEM_LOCAL_CACHE", "0")]).unwrap().local_cache, 0);
        let error = from(&[("IDEM_LOCAL_CACHE", "lots")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("IDEM_LOCAL_CACHE") && error.contains("whole number"),
            "{error}"
        );
        let file: Config = serde_json::from_str(r#"{"local_cache":64}"#).unwrap();
        assert_eq!(file.local_cache, 64);
        assert_eq!(Config::default().local_cache(8).local_cache, 8);
    }

    #[test]
    fn allow_eviction_is_off_by_default_and_set_by_env_file_or_code() {
        assert!(!Config::default().allow_eviction);
        assert!(Config::ENV_VARS.contains(&"IDEM_ALLOW_EVICTION"));
        for on in ["1", "true", "YES", "on"] {
            assert!(
                from(&[("IDEM_ALLOW_EVICTION", on)]).unwrap().allow_eviction,
                "{on}"
            );
        }
        for off in ["0", "false", "no", "Off"] {
            assert!(
                !from(&[("IDEM_ALLOW_EVICTION", off)])
                    .unwrap()
                    .allow_eviction,
                "{off}"
            );
        }
        let error = from(&[("IDEM_ALLOW_EVICTION", "sometimes")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("IDEM_ALLOW_EVICTION") && error.contains("`true` or `false`"),
            "{error}"
        );
        let file: Config = serde_json::from_str(r#"{"allow_eviction":true}"#).unwrap();
        assert!(file.allow_eviction);
        assert!(Config::default().allow_eviction(true).allow_eviction);
    }

    #[test]
    fn postgres_urls_and_table_settings_are_read() {
        for url in ["postgres://u:p@127.0.0.1:5433/app", "postgresql://u@h/db"] {
            let config = from(&[("IDEM_STORE", url)]).unwrap();
            assert_eq!(config.store, url);
        }
        let config = from(&[
            ("IDEM_PG_SCHEMA", "billing"),
            ("IDEM_PG_TABLE", "keys"),
            ("IDEM_PG_CREATE_TABLE", "false"),
        ])
        .unwrap();
        assert_eq!(
            (config.pg_schema.as_str(), config.pg_table.as_str()),
            ("billing", "keys")
        );
        assert!(!config.pg_create_table);
        assert!(Config::default().pg_create_table);
        let error = from(&[("IDEM_PG_CREATE_TABLE", "perhaps")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("IDEM_PG_CREATE_TABLE"), "{error}");
    }

    #[test]
    fn the_store_latency_is_on_by_default_and_set_by_env_file_or_code() {
        assert!(Config::default().store_latency);
        assert!(
            !from(&[("IDEM_STORE_LATENCY", "false")])
                .unwrap()
                .store_latency
        );
        assert!(from(&[("IDEM_STORE_LATENCY", "on")]).unwrap().store_latency);
        let error = from(&[("IDEM_STORE_LATENCY", "sometimes")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("IDEM_STORE_LATENCY"), "{error}");
        let file: Config = serde_json::from_str(r#"{"store_latency":false}"#).unwrap();
        assert!(!file.store_latency);
        assert!(!Config::default().store_latency(false).store_latency);
    }

    #[test]
    fn the_pooler_setting_is_off_by_default_and_set_by_env_file_or_code() {
        assert!(!Config::default().pg_pooler);
        assert!(from(&[("IDEM_PG_POOLER", "true")]).unwrap().pg_pooler);
        let error = from(&[("IDEM_PG_POOLER", "pgbouncer")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("IDEM_PG_POOLER"), "{error}");
        let file: Config = serde_json::from_str(r#"{"pg_pooler":true}"#).unwrap();
        assert!(file.pg_pooler);
        assert!(Config::default().pg_pooler(true).pg_pooler);
    }

    #[test]
    fn min_replicas_is_off_by_default_and_set_by_env_file_or_code() {
        let default = Config::default();
        assert_eq!(
            (default.min_replicas, default.replica_timeout),
            (0, Duration::from_secs(1))
        );
        let config = from(&[
            ("IDEM_MIN_REPLICAS", "2"),
            ("IDEM_REPLICA_TIMEOUT", "250ms"),
        ])
        .unwrap();
        assert_eq!(config.min_replicas, 2);
        assert_eq!(config.replica_timeout, Duration::from_millis(250));
        for (name, value, expect) in [
            ("IDEM_MIN_REPLICAS", "one", "whole number of replicas"),
            ("IDEM_MIN_REPLICAS", "-1", "whole number of replicas"),
            ("IDEM_REPLICA_TIMEOUT", "soon", "a duration"),
        ] {
            let error = from(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(expect), "{error}");
        }
        let error = from(&[("IDEM_MIN_REPLICAS", "1"), ("IDEM_REPLICA_TIMEOUT", "0s")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`replica_timeout` must be at least 1ms"),
            "{error}"
        );
        assert!(
            from(&[("IDEM_REPLICA_TIMEOUT", "0s")]).is_ok(),
            "unused without min_replicas"
        );
        let file: Config =
            serde_json::from_str(r#"{"min_replicas":1,"replica_timeout":"2s"}"#).unwrap();
        assert_eq!(
            (file.min_replicas, file.replica_timeout),
            (1, Duration::from_secs(2))
        );
        let built = Config::default()
            .min_replicas(1)
            .replica_timeout(Duration::from_millis(100));
        assert_eq!(
            (built.min_replicas, built.replica_timeout),
            (1, Duration::from_millis(100))
        );
    }
}
