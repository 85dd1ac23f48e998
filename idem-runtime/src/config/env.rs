//! [`Config::from_env`]: the `IDEM_*` environment variables, read over the defaults.

use crate::error::Error;

use super::validate::check_store;
use super::{Config, FailMode, bad_var};

impl Config {
    /// The environment variables [`Config::from_env`] reads, for tools that list or clear them.
    pub const ENV_VARS: &'static [&'static str] = &[
        "IDEM_STORE",
        "IDEM_PREFIX",
        "IDEM_FAIL_MODE",
        "IDEM_ABANDONED",
        "IDEM_HASH_KEYS",
        "IDEM_POOL_SIZE",
        "IDEM_CONNECT_TIMEOUT",
        "IDEM_COMMAND_TIMEOUT",
        "IDEM_MEMORY_CAPACITY",
        "IDEM_TTL",
        "IDEM_LEASE",
        "IDEM_WAIT",
        "IDEM_MIN_REPLICAS",
        "IDEM_REPLICA_TIMEOUT",
        "IDEM_LOCAL_CACHE",
        "IDEM_ALLOW_EVICTION",
        "IDEM_PG_SCHEMA",
        "IDEM_PG_TABLE",
        "IDEM_PG_CREATE_TABLE",
        "IDEM_PG_POOLER",
        "IDEM_STORE_LATENCY",
    ];

    /// Reads the `IDEM_*` environment variables over the defaults:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `IDEM_STORE` | `memory`, `redis://host:6379/0`, `rediss://…`, `redis+cluster://h1:p1,h2:p2`, `postgres://user:pass@host:5432/db`, or a scheme registered with [`register_scheme`](crate::store::registry::register_scheme) | `memory` |
    /// | `IDEM_PREFIX` | the first part of every key | `idem` |
    /// | `IDEM_FAIL_MODE` | `closed` or `open` | `closed` |
    /// | `IDEM_ABANDONED` | `rerun` or `fail`: what a call does when an earlier attempt of its key was abandoned (see [`Abandoned`](crate::Abandoned)) | unset: no attempt marks |
    /// | `IDEM_HASH_KEYS` | `true` to store every key as its SHA-256 | `false` |
    /// | `IDEM_POOL_SIZE` | connections to the store | 1 (one server), 16 (Cluster), 10 (PostgreSQL) |
    /// | `IDEM_CONNECT_TIMEOUT`, `IDEM_COMMAND_TIMEOUT` | durations such as `5s`, `250ms` | `5s`, `2s` |
    /// | `IDEM_MEMORY_CAPACITY` | records the memory store holds at most | `100000` |
    /// | `IDEM_TTL`, `IDEM_LEASE`, `IDEM_WAIT` | defaults for functions that set none | `24h`, `30s`, `10s` |
    /// | `IDEM_MIN_REPLICAS` | replicas that must acknowledge a claim or a result (Redis) | `0` |
    /// | `IDEM_REPLICA_TIMEOUT` | how long a write waits for them | `1s` |
    /// | `IDEM_LOCAL_CACHE` | completed records kept in process, in front of the store (`0` is off) | `0` |
    /// | `IDEM_ALLOW_EVICTION` | `true` to accept a Redis that can evict records | `false` |
    /// | `IDEM_PG_SCHEMA`, `IDEM_PG_TABLE` | the PostgreSQL store's table | `public`, `idem_records` |
    /// | `IDEM_PG_CREATE_TABLE` | `false` to refuse a missing table instead of creating it | `true` |
    /// | `IDEM_STORE_LATENCY` | `false` to record no `idem_store_seconds` (no clock read per store operation) | `true` |
    /// | `IDEM_PG_POOLER` | `true` when PostgreSQL is reached through a transaction-mode pooler (PgBouncer): no prepared statements | `false` |
    ///
    /// A malformed value is [`Error::Config`] naming the variable and what it accepts.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Config::from_env), reading the variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let mut config = Config::default();
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(store) = get("IDEM_STORE") {
            config.store = store.trim().to_owned();
            check_store(&config.store, "IDEM_STORE")?;
        }
        if let Some(prefix) = get("IDEM_PREFIX") {
            config.prefix = prefix;
        }
        if let Some(mode) = get("IDEM_FAIL_MODE") {
            config.fail_mode = match mode.trim().to_ascii_lowercase().as_str() {
                "closed" => FailMode::Closed,
                "open" => FailMode::Open,
                _ => return Err(bad_var("IDEM_FAIL_MODE", &mode, "`closed` or `open`")),
            };
        }
        if let Some(policy) = get("IDEM_ABANDONED") {
            config.abandoned = Some(
                crate::Abandoned::parse(&policy)
                    .ok_or_else(|| bad_var("IDEM_ABANDONED", &policy, "`rerun` or `fail`"))?,
            );
        }
        let flag = |name: &str, value: String| -> Result<bool, Error> {
            match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(bad_var(name, &value, "`true` or `false`")),
            }
        };
        if let Some(v) = get("IDEM_HASH_KEYS") {
            config.hash_keys = flag("IDEM_HASH_KEYS", v)?;
        }
        if let Some(v) = get("IDEM_PG_CREATE_TABLE") {
            config.pg_create_table = flag("IDEM_PG_CREATE_TABLE", v)?;
        }
        if let Some(v) = get("IDEM_STORE_LATENCY") {
            config.store_latency = flag("IDEM_STORE_LATENCY", v)?;
        }
        if let Some(v) = get("IDEM_PG_POOLER") {
            config.pg_pooler = flag("IDEM_PG_POOLER", v)?;
        }
        if let Some(v) = get("IDEM_PG_SCHEMA") {
            config.pg_schema = v.trim().to_owned();
        }
        if let Some(v) = get("IDEM_PG_TABLE") {
            config.pg_table = v.trim().to_owned();
        }
        if let Some(flag) = get("IDEM_ALLOW_EVICTION") {
            config.allow_eviction = match flag.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(bad_var("IDEM_ALLOW_EVICTION", &flag, "`true` or `false`")),
            };
        }
        let count = |name: &str, value: String| -> Result<usize, Error> {
            match value.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad_var(name, &value, "a whole number greater than 0")),
            }
        };
        if let Some(v) = get("IDEM_POOL_SIZE") {
            config.pool_size = Some(count("IDEM_POOL_SIZE", v)?);
        }
        if let Some(v) = get("IDEM_MEMORY_CAPACITY") {
            config.memory_capacity = count("IDEM_MEMORY_CAPACITY", v)?;
        }
        if let Some(v) = get("IDEM_LOCAL_CACHE") {
            config.local_cache = v.trim().parse().map_err(|_| {
                bad_var(
                    "IDEM_LOCAL_CACHE",
                    &v,
                    "a whole number of records (0 turns the local cache off)",
                )
            })?;
        }
        if let Some(v) = get("IDEM_MIN_REPLICAS") {
            config.min_replicas = v.trim().parse().map_err(|_| {
                bad_var(
                    "IDEM_MIN_REPLICAS",
                    &v,
                    "a whole number of replicas (0 does not wait for replicas)",
                )
            })?;
        }
        for (name, slot) in [
            ("IDEM_CONNECT_TIMEOUT", &mut config.connect_timeout),
            ("IDEM_COMMAND_TIMEOUT", &mut config.command_timeout),
            ("IDEM_TTL", &mut config.ttl),
            ("IDEM_LEASE", &mut config.lease),
            ("IDEM_WAIT", &mut config.wait),
            ("IDEM_REPLICA_TIMEOUT", &mut config.replica_timeout),
        ] {
            if let Some(v) = get(name) {
                *slot = humantime::parse_duration(v.trim()).map_err(|_| {
                    bad_var(name, &v, "a duration such as `250ms`, `30s`, `24h` or `7d`")
                })?;
            }
        }
        config.validate()?;
        Ok(config)
    }
}
