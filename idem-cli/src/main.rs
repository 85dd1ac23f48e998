//! `idem`: the command line of the `idem-fn` crate, for operators. It tells what a store holds
//! for one call (`inspect`), deletes it so that the call runs again (`forget`), stores a result
//! by hand for a call whose attempt was abandoned (`complete`), and counts the records by state
//! (`stats`), on Redis, a Redis Cluster, PostgreSQL, SQLite or MySQL.
//!
//! It goes through the library: the configuration is read as an application reads it
//! (`idem::Config::from_env`, the `IDEM_*` variables, `--store` and `--prefix` over them),
//! and store keys are built by `idem::Idem::store_key_of`, exactly as calls build them.
//!
//! `main.rs`: the command line and what each command does; `record.rs`: which record the
//! arguments name; `output.rs`: what is printed.

mod output;
mod record;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use idem::{Config, Idem, Inspection};
use serde_json::json;

use output::{inspected, inspection_text, scopes_json, scopes_text, stats_text};
use record::Target;

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
  idem inspect shop::order --part acme --part 42       # key = (tenant, id)
  idem inspect http 8e03978e-40d5 --principal sk_live_alice   # the HTTP layer's record
  idem inspect http 8e03978e-40d5 --http               # the HTTP layer, no principal
  idem forget --store-key 'idem:billing.invoice:inv-42'   # the key a log line shows
  idem complete payouts::send po-7 --value '{\"id\":\"tr_1\"}' --ttl 7d   # settle an abandoned attempt
  idem inspect billing::invoice -- -x42                # a key that starts with `-`
  idem --store redis+cluster://10.0.0.1:7000,10.0.0.2:7000 stats --sample 50000 --json
  idem stats --by-scope                                # records per scope")]
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
    /// by the library, as calls build it (IDEM_PREFIX or --prefix, IDEM_HASH_KEYS): KEY is a
    /// single key (`key = id`); a tuple key (`key = (tenant, id)`) is --part TENANT --part ID;
    /// a request of the HTTP layer is KEY (its Idempotency-Key) with --principal P, or with
    /// --http when the layer has no principal; --store-key takes the key a log line shows.
    /// When nothing is found, says which store key was looked up.
    #[command(override_usage = "idem inspect [OPTIONS] SCOPE KEY
       idem inspect [OPTIONS] SCOPE --part PART [--part PART]...
       idem inspect [OPTIONS] SCOPE KEY --principal PRINCIPAL
       idem inspect [OPTIONS] SCOPE KEY --http
       idem inspect [OPTIONS] --store-key RAW")]
    #[command(after_help = "Examples:
  idem inspect billing::invoice inv-42
  idem inspect shop::order --part acme --part 42
  idem inspect http 8e03978e-40d5 --principal sk_live_alice
  idem inspect --store-key 'idem:billing.invoice:inv-42'
  idem inspect billing::invoice -- -x42")]
    Inspect {
        #[command(flatten)]
        target: Target,
    },
    /// Deletes the record of the call of SCOPE with KEY, so that its next call runs again
    ///
    /// A call still running with this key loses its claim: its result is returned to its
    /// caller but not stored. Calls waiting on the key are woken. Prints whether a live
    /// record was deleted. The record is named as for `inspect`: KEY, --part, --principal or
    /// --http, --store-key.
    #[command(override_usage = "idem forget [OPTIONS] SCOPE KEY
       idem forget [OPTIONS] SCOPE --part PART [--part PART]...
       idem forget [OPTIONS] SCOPE KEY --principal PRINCIPAL
       idem forget [OPTIONS] SCOPE KEY --http
       idem forget [OPTIONS] --store-key RAW")]
    #[command(after_help = "Examples:
  idem forget billing::invoice inv-42
  idem forget shop::order --part acme --part 42
  idem forget http 8e03978e-40d5 --principal sk_live_alice
  idem forget --store-key 'idem:billing.invoice:inv-42'
  idem forget billing::invoice --key=-x42")]
    Forget {
        #[command(flatten)]
        target: Target,
    },
    /// Stores VALUE as the result of the call of SCOPE with KEY: its next call replays it
    ///
    /// For a call whose attempt was abandoned (`abandoned = "fail"`: inspect shows it) and whose
    /// outcome an operator settled by hand. VALUE is the function's value as JSON (for a
    /// `Result<T, E>`, the `T`); it is kept for --ttl. The call's attempt mark and recorded
    /// steps are forgotten. Refused while a call holds the key or when it holds a result
    /// already (forget it first). The record is named as for `inspect`.
    #[command(override_usage = "idem complete [OPTIONS] SCOPE KEY --value JSON
       idem complete [OPTIONS] SCOPE --part PART [--part PART]... --value JSON
       idem complete [OPTIONS] --store-key RAW --value JSON")]
    #[command(after_help = "Examples:
  idem complete payouts::send po-7 --value '{\"id\":\"tr_1\"}'
  idem complete shop::order --part acme --part 42 --value 42 --ttl 7d")]
    Complete {
        #[command(flatten)]
        target: Target,
        /// The value, as JSON
        #[arg(long, value_name = "JSON")]
        value: String,
        /// How long it is kept [default: IDEM_TTL, else 24h]
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Counts the live records under the prefix by state, sampling a large store
    ///
    /// Counts calls in progress and completed records under the prefix (every scope). Counting
    /// stops after --sample records, so a large store is sampled, never read whole, and the
    /// output says whether the counts are exact or those of a sample. Redis: SCAN with MATCH
    /// <prefix>:* on every master (never KEYS), and DBSIZE for context. PostgreSQL: at most
    /// --sample live rows of the prefix's key range, and the table's estimated row count.
    /// --by-scope adds the counts per scope, from the same records: two scopes where one was
    /// expected are a function renamed or moved without an explicit `scope = "…"`.
    Stats {
        /// Counts at most this many records; when there are more, the counts are those of a
        /// sample of this size
        #[arg(long, value_name = "N", default_value_t = 10_000,
              value_parser = clap::value_parser!(u64).range(1..))]
        sample: u64,
        /// Also counts the records of each scope (as stored: `billing::invoice` is
        /// `billing.invoice`, a long scope a hash), among the same --sample records
        #[arg(long)]
        by_scope: bool,
    },
}

/// What to do, once the arguments are read.
enum Job {
    Inspect(record::Named),
    Forget(record::Named),
    Complete {
        named: record::Named,
        value: serde_json::Value,
        ttl: std::time::Duration,
    },
    Stats {
        sample: u64,
        by_scope: bool,
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
    // Which record, checked before connecting: a usage error never waits for a store.
    let job = match &cli.command {
        Command::Inspect { target } => Job::Inspect(target.named().map_err(Failure::Usage)?),
        Command::Forget { target } => Job::Forget(target.named().map_err(Failure::Usage)?),
        Command::Complete { target, value, ttl } => Job::Complete {
            named: target.named().map_err(Failure::Usage)?,
            value: serde_json::from_str(value)
                .map_err(|error| Failure::Usage(format!("--value is not JSON: {error}")))?,
            ttl: ttl.unwrap_or(config.ttl),
        },
        Command::Stats { sample, by_scope } => Job::Stats {
            sample: *sample,
            by_scope: *by_scope,
        },
    };
    let idem = Idem::connect(&config)
        .await
        .map_err(|error| Failure::Store(store_error(&error)))?;
    let store = idem.store().describe();
    match job {
        Job::Inspect(named) => {
            let store_key = idem.store_key_of(&named.scope, &named.key);
            let inspection = idem
                .scope(idem::inspect(&named.scope, named.key.clone()))
                .await
                .map_err(|error| Failure::Store(store_error(&error)))?;
            let absent = matches!(inspection, Inspection::Absent);
            let mut answer = named.json(&store_key);
            inspected(&mut answer, &inspection);
            if absent {
                answer["hint"] = named.hint(&store_key).into();
            }
            Ok(if cli.json {
                answer.to_string()
            } else if absent {
                format!(
                    "{}\nnot found:    {}",
                    inspection_text(&store_key, &inspection),
                    named.hint(&store_key)
                )
            } else {
                inspection_text(&store_key, &inspection)
            })
        }
        Job::Forget(named) => {
            let store_key = idem.store_key_of(&named.scope, &named.key);
            let deleted = idem
                .scope(idem::forget(&named.scope, named.key.clone()))
                .await
                .map_err(|error| Failure::Store(store_error(&error)))?;
            let mut answer = named.json(&store_key);
            answer["deleted"] = deleted.into();
            if !deleted {
                answer["hint"] = named.hint(&store_key).into();
            }
            Ok(if cli.json {
                answer.to_string()
            } else if deleted {
                format!("forgot {store_key}: its record was deleted; the next call runs again")
            } else {
                format!(
                    "nothing to forget: no live record under {store_key}\nnot found:    {}",
                    named.hint(&store_key)
                )
            })
        }
        Job::Complete { named, value, ttl } => {
            let store_key = idem.store_key_of(&named.scope, &named.key);
            idem.scope(idem::complete(&named.scope, named.key.clone(), value, ttl))
                .await
                .map_err(|error| Failure::Store(store_error(&error)))?;
            let mut answer = named.json(&store_key);
            answer["completed"] = true.into();
            answer["ttl_ms"] = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).into();
            Ok(if cli.json {
                answer.to_string()
            } else {
                format!(
                    "completed {store_key}: its next call replays the value (kept {})",
                    humantime::format_duration(ttl)
                )
            })
        }
        Job::Stats { sample, by_scope } => {
            let limit = usize::try_from(sample).unwrap_or(usize::MAX);
            let stats = idem
                .scope(idem::stats(limit))
                .await
                .map_err(|error| Failure::Store(store_error(&error)))?;
            let key_prefix = idem.key_prefix();
            let postgres = config.store.starts_with("postgres");
            Ok(if cli.json {
                let mut answer = json!({
                    "store": store,
                    "prefix": config.prefix,
                    "key_prefix": key_prefix,
                    "in_progress": stats.in_progress,
                    "completed": stats.completed,
                    "total": stats.total(),
                    "exact": stats.exact,
                    "sample": sample,
                    "store_keys": stats.store_keys,
                    "tokens": stats.tokens,
                    "redeemed_tokens": stats.redeemed_tokens,
                });
                if by_scope {
                    answer["scopes"] = scopes_json(&stats);
                }
                answer.to_string()
            } else {
                let text = stats_text(
                    &store,
                    &config.prefix,
                    &key_prefix,
                    &stats,
                    sample,
                    postgres,
                );
                if by_scope {
                    format!("{text}\n{}", scopes_text(&stats))
                } else {
                    text
                }
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
redis+cluster://host1:port1,host2:port2, postgres://user:password@host:port/db, \
mysql://user:password@host:port/db or sqlite://path/to/idem.db";

/// A library error as one line: what failed, and why.
fn store_error(error: &idem::Error) -> String {
    match error {
        idem::Error::Store { key, source } => format!("the store failed on `{key}`: {source}"),
        other => other.to_string(),
    }
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
}
