//! `idem`: the command line of the `idem-fn` crate, for operators. It tells what a store holds
//! for one call (`inspect`), deletes it so that the call runs again (`forget`), and counts the
//! records by state (`stats`), on Redis, a Redis Cluster or PostgreSQL.
//!
//! It goes through the library: the configuration is read as an application reads it
//! (`idem::Config::from_env`, the `IDEM_*` variables, `--store` and `--prefix` over them),
//! and store keys are built by `idem::Idem::store_key`, exactly as calls build them.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use idem::{Config, Idem, Inspection, Stats};
use serde_json::{Value, json};

/// The exit status of a store that failed or could not be reached.
const STORE_FAILED: u8 = 1;
/// The exit status of a usage error: arguments, or a configuration that is not valid.
const USAGE: u8 = 2;

/// Inspect, forget and count the records of idem (the `idem-fn` crate) in its store.
///
/// The store and its settings are read like an application reads them: `--store` or
/// IDEM_STORE, `--prefix` or IDEM_PREFIX, and the other IDEM_* variables (IDEM_HASH_KEYS,
/// IDEM_PG_SCHEMA, IDEM_PG_TABLE, IDEM_CONNECT_TIMEOUT, IDEM_COMMAND_TIMEOUT…), so that keys
/// are found exactly where calls keep them. Exit status: 0 done, 1 the store failed, 2 usage
/// error.
#[derive(Debug, Parser)]
#[command(name = "idem", version)]
#[command(after_help = "Examples:
  idem --store redis://127.0.0.1:6379/0 inspect billing::invoice inv-42
  IDEM_STORE=postgres://app@db:5432/app idem forget billing::invoice inv-42
  idem --store redis+cluster://10.0.0.1:7000,10.0.0.2:7000 stats --sample 50000 --json")]
struct Cli {
    /// The store: redis://host:port/db, rediss://…, redis+cluster://host1:port1,host2:port2,
    /// rediss+cluster://… or postgres://user:password@host:port/db [default: IDEM_STORE]
    #[arg(long, global = true, value_name = "URL")]
    store: Option<String>,

    /// The first part of every key, as the application sets it [default: IDEM_PREFIX, else
    /// `idem`]
    #[arg(long, global = true)]
    prefix: Option<String>,

    /// Prints one JSON object on standard output instead of text
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Shows what the store holds for the call of SCOPE with KEY
    ///
    /// Nothing (absent), a call in progress and the lease it has left, or a completed result,
    /// the time it has left, its size and its request's fingerprint. The store key is built
    /// by the library, as calls build it (IDEM_PREFIX or --prefix, IDEM_HASH_KEYS).
    Inspect {
        /// The call's scope: the function's path (`billing::invoice`), or its `scope = "…"`
        scope: String,
        /// The call's key, as the function's `key = …` gives it (a single value)
        key: String,
    },
    /// Deletes the record of the call of SCOPE with KEY, so that its next call runs again
    ///
    /// A call still running with this key loses its claim: its result is returned to its
    /// caller but not stored. Calls waiting on the key are woken. Prints whether a live
    /// record was deleted.
    Forget {
        /// The call's scope: the function's path (`billing::invoice`), or its `scope = "…"`
        scope: String,
        /// The call's key, as the function's `key = …` gives it (a single value)
        key: String,
    },
    /// Counts the live records under the prefix by state, sampling a large store
    ///
    /// Counts calls in progress and completed records under the prefix (every scope). Counting
    /// stops after --sample records, so a large store is sampled, never read whole, and the
    /// output says whether the counts are exact or those of a sample. Redis: SCAN with MATCH
    /// <prefix>:* on every master (never KEYS), and DBSIZE for context. PostgreSQL: at most
    /// --sample live rows of the prefix's key range, and the table's estimated row count.
    Stats {
        /// Counts at most this many records; when there are more, the counts are those of a
        /// sample of this size
        #[arg(long, value_name = "N", default_value_t = 10_000,
              value_parser = clap::value_parser!(u64).range(1..))]
        sample: u64,
    },
}

/// Why the command failed, and so its exit status.
#[derive(Debug)]
enum Failure {
    /// Arguments or configuration: exit status 2.
    Usage(String),
    /// The store failed or could not be reached: exit status 1.
    Store(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("idem: cannot start the async runtime: {error}");
            return ExitCode::from(STORE_FAILED);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(message)) => {
            eprintln!("idem: {message}");
            ExitCode::from(USAGE)
        }
        Err(Failure::Store(message)) => {
            eprintln!("idem: {message}");
            ExitCode::from(STORE_FAILED)
        }
    }
}

/// Runs the command and returns what it prints.
async fn run(cli: &Cli) -> Result<String, Failure> {
    let config = config(cli, |name| std::env::var(name).ok())?;
    let idem = Idem::connect(&config)
        .await
        .map_err(|error| Failure::Store(store_error(&error)))?;
    let store = idem.store().describe();
    match &cli.command {
        Command::Inspect { scope, key } => {
            let store_key = idem.store_key(scope, key);
            let inspection = idem
                .scope(idem::inspect(scope, key))
                .await
                .map_err(|error| Failure::Store(store_error(&error)))?;
            let mut answer = json!({ "scope": scope, "key": key, "store_key": store_key });
            inspected(&mut answer, &inspection);
            Ok(if cli.json {
                answer.to_string()
            } else {
                inspection_text(&store_key, &inspection)
            })
        }
        Command::Forget { scope, key } => {
            let store_key = idem.store_key(scope, key);
            let deleted = idem
                .scope(idem::forget(scope, key))
                .await
                .map_err(|error| Failure::Store(store_error(&error)))?;
            Ok(if cli.json {
                json!({ "scope": scope, "key": key, "store_key": store_key, "deleted": deleted })
                    .to_string()
            } else if deleted {
                format!("forgot {store_key}: its record was deleted; the next call runs again")
            } else {
                format!("nothing to forget: no live record under {store_key}")
            })
        }
        Command::Stats { sample } => {
            let limit = usize::try_from(*sample).unwrap_or(usize::MAX);
            let stats = idem
                .scope(idem::stats(limit))
                .await
                .map_err(|error| Failure::Store(store_error(&error)))?;
            let key_prefix = idem.key_prefix();
            let postgres = config.store.starts_with("postgres");
            Ok(if cli.json {
                json!({
                    "store": store,
                    "prefix": config.prefix,
                    "key_prefix": key_prefix,
                    "in_progress": stats.in_progress,
                    "completed": stats.completed,
                    "total": stats.total(),
                    "exact": stats.exact,
                    "sample": sample,
                    "store_keys": stats.store_keys,
                })
                .to_string()
            } else {
                stats_text(
                    &store,
                    &config.prefix,
                    &key_prefix,
                    &stats,
                    *sample,
                    postgres,
                )
            })
        }
    }
}

/// The configuration calls would use, from the environment (`lookup`), with `--store` and
/// `--prefix` over it; then what this command needs: one connection, and nothing created or
/// refused on the store's behalf.
fn config(cli: &Cli, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Failure> {
    let given = |text: &Option<String>| text.as_ref().is_some_and(|t| !t.trim().is_empty());
    // A flag hides the variable it replaces, which is then neither read nor checked.
    let lookup = |name: &str| match name {
        "IDEM_STORE" if given(&cli.store) => None,
        "IDEM_PREFIX" if cli.prefix.is_some() => None,
        _ => lookup(name),
    };
    if !given(&cli.store) && !given(&lookup("IDEM_STORE")) {
        return Err(Failure::Usage(format!(
            "no store given: pass --store URL or set IDEM_STORE ({FORMS})"
        )));
    }
    let mut config =
        Config::from_lookup(lookup).map_err(|error| Failure::Usage(error.to_string()))?;
    if let Some(store) = cli.store.as_ref().filter(|_| given(&cli.store)) {
        config = config.store(store.trim());
    }
    if let Some(prefix) = &cli.prefix {
        config = config.prefix(prefix.as_str());
    }
    if config.store == "memory" {
        return Err(Failure::Usage(format!(
            "the memory store lives inside one process, so there is nothing to look at from \
             outside it; name a shared store ({FORMS})"
        )));
    }
    let config = config
        // One operation at a time: one connection is enough.
        .pool_size(1)
        // The records are looked at, not served: a Redis that may evict them is still read.
        .allow_eviction(true)
        // An operator's look creates no table.
        .pg_create_table(false)
        .local_cache(0);
    config.validate().map_err(|error| {
        Failure::Usage(format!(
            "{error} (from --store, --prefix and the IDEM_* variables)"
        ))
    })?;
    Ok(config)
}

/// The store URLs, for messages.
const FORMS: &str = "redis://host:port/db, rediss://host:port/db, \
redis+cluster://host1:port1,host2:port2 or postgres://user:password@host:port/db";

/// A library error as one line: what failed, and why.
fn store_error(error: &idem::Error) -> String {
    match error {
        idem::Error::Store { key, source } => format!("the store failed on `{key}`: {source}"),
        other => other.to_string(),
    }
}

/// Adds the fields of `inspection` to the JSON object `answer`.
fn inspected(answer: &mut Value, inspection: &Inspection) {
    let fields = match inspection {
        Inspection::InProgress {
            lease_left,
            fingerprint,
        } => json!({
            "state": "in_progress",
            "lease_left_ms": lease_left.map(millis),
            "fingerprint": fingerprint.map(|fp| fp.to_hex()),
        }),
        Inspection::Completed {
            ttl_left,
            fingerprint,
            size,
        } => json!({
            "state": "completed",
            "ttl_left_ms": ttl_left.map(millis),
            "size": size,
            "fingerprint": fingerprint.map(|fp| fp.to_hex()),
        }),
        // `Absent`, and whatever a later version of the library reports.
        _ => json!({ "state": "absent" }),
    };
    if let (Value::Object(answer), Value::Object(fields)) = (answer, fields) {
        answer.extend(fields);
    }
}

/// `inspection` as text.
fn inspection_text(store_key: &str, inspection: &Inspection) -> String {
    let fingerprint =
        |fp: &Option<idem::Fingerprint>| fp.map_or_else(|| "none".to_owned(), |fp| fp.to_hex());
    let lines = match inspection {
        Inspection::InProgress {
            lease_left,
            fingerprint: fp,
        } => vec![
            ("state", "in progress (a call is running)".to_owned()),
            ("lease left", left(*lease_left)),
            ("fingerprint", fingerprint(fp)),
        ],
        Inspection::Completed {
            ttl_left,
            fingerprint: fp,
            size,
        } => vec![
            ("state", "completed (its result is replayed)".to_owned()),
            ("ttl left", left(*ttl_left)),
            ("size", format!("{size} bytes")),
            ("fingerprint", fingerprint(fp)),
        ],
        _ => vec![(
            "state",
            "absent (no live record: the next call runs)".to_owned(),
        )],
    };
    let mut text = format!("key:          {store_key}");
    for (name, value) in lines {
        text.push_str(&format!("\n{:<14}{value}", format!("{name}:")));
    }
    text
}

/// `stats` as text.
fn stats_text(
    store: &str,
    prefix: &str,
    key_prefix: &str,
    stats: &Stats,
    sample: u64,
    postgres: bool,
) -> String {
    let counted = if stats.exact {
        "exact: every live record under the prefix".to_owned()
    } else {
        format!(
            "a sample: the first {} records found (--sample {sample}); there are more",
            stats.total()
        )
    };
    let mut text = format!(
        "store:        {store}\n\
         prefix:       {prefix} (keys {key_prefix}*)\n\
         in progress:  {}\n\
         completed:    {}\n\
         total:        {}\n\
         counted:      {counted}",
        stats.in_progress,
        stats.completed,
        stats.total()
    );
    if let Some(keys) = stats.store_keys {
        let what = if postgres {
            "rows in the table in all, as PostgreSQL estimates them (pg_class.reltuples)"
        } else {
            "keys in the database in all (DBSIZE), idem's or not"
        };
        text.push_str(&format!("\nstore keys:   {keys} {what}"));
    }
    text
}

/// A duration left, to the millisecond.
fn left(duration: Option<Duration>) -> String {
    match duration {
        Some(duration) => {
            let ms = Duration::from_millis(millis(duration));
            humantime::format_duration(ms).to_string()
        }
        None => "unknown".to_owned(),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("idem").chain(args.iter().copied())).unwrap()
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flags_replace_the_variables_and_the_rest_is_read_from_them() {
        let vars = env(&[
            ("IDEM_STORE", "bogus://x"),
            ("IDEM_PREFIX", "env"),
            ("IDEM_HASH_KEYS", "true"),
        ]);
        let args = cli(&[
            "--store",
            "redis://127.0.0.1:1/0",
            "--prefix",
            "shop",
            "stats",
        ]);
        let config = config(&args, &vars).unwrap();
        assert_eq!(config.store, "redis://127.0.0.1:1/0");
        assert_eq!(config.prefix, "shop");
        assert!(config.hash_keys);
        let config = config_of(&["stats"], &[("IDEM_STORE", "postgres://u@h/db")]).unwrap();
        assert_eq!(
            (config.store.as_str(), config.prefix.as_str()),
            ("postgres://u@h/db", "idem")
        );
        assert!(!config.pg_create_table);
    }

    fn config_of(
        args: &[&str],
        vars: &'static [(&'static str, &'static str)],
    ) -> Result<Config, Failure> {
        config(&cli(args), env(vars))
    }

    #[test]
    fn a_missing_unknown_or_in_process_store_is_a_usage_error() {
        for (vars, expected) in [
            (
                &[][..],
                "no store given: pass --store URL or set IDEM_STORE",
            ),
            (&[("IDEM_STORE", " ")][..], "no store given"),
            (
                &[("IDEM_STORE", "mongodb://h/db")][..],
                "IDEM_STORE=`mongodb://h/db` is not valid",
            ),
            (
                &[("IDEM_STORE", "memory")][..],
                "the memory store lives inside one process",
            ),
        ] {
            match config_of(&["stats"], vars) {
                Err(Failure::Usage(message)) => {
                    assert!(message.contains(expected), "{message}")
                }
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn inspections_print_their_fields() {
        let completed = Inspection::Completed {
            ttl_left: Some(Duration::from_millis(90_500)),
            fingerprint: None,
            size: 57,
        };
        let text = inspection_text("idem:s:k", &completed);
        assert!(
            text.contains("completed") && text.contains("1m 30s 500ms"),
            "{text}"
        );
        assert!(text.contains("57 bytes") && text.contains("none"), "{text}");
        let mut answer = json!({ "store_key": "idem:s:k" });
        inspected(&mut answer, &completed);
        assert_eq!(answer["state"], "completed");
        assert_eq!(answer["ttl_left_ms"], 90_500);
        assert_eq!(answer["size"], 57);
        assert_eq!(answer["store_key"], "idem:s:k");
    }
}
