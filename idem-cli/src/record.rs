//! Which record `inspect` and `forget` act on: the arguments that name it (a single key, the
//! parts of a tuple key, an HTTP request's principal and key, or a store key as it is stored),
//! turned into the library's [`RecordKey`], and what to say when nothing is found there.

use clap::Args;
use idem::RecordKey;
use serde_json::{Value, json};

/// The record of a call: SCOPE and its key (KEY, --key, --part, or --http/--principal with the
/// client's key), or --store-key alone.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which")
    .required(true)
    .args(["key", "key_flag", "part", "store_key"]))]
pub(crate) struct Target {
    /// The call's scope: the function's path (`billing::invoice`), its `scope = "…"`, or the
    /// HTTP layer's (`http`, unless the layer sets `.scope(…)`); `idem stats --by-scope` lists
    /// the scopes in the store. Not with --store-key
    #[arg(required_unless_present = "store_key", conflicts_with = "store_key")]
    scope: Option<String>,

    /// The call's key, as the function's `key = …` gives it (a single value); with --http or
    /// --principal, the request's Idempotency-Key. A negative number is a key (`-42`); any
    /// other key that starts with `-` goes after `--` (`-- -x`) or in --key=-x
    #[arg(
        allow_negative_numbers = true,
        conflicts_with_all = ["key_flag", "part", "store_key"]
    )]
    key: Option<String>,

    /// The call's key, like KEY; for a key that starts with `-`: --key=-42
    #[arg(
        long = "key",
        id = "key_flag",
        value_name = "KEY",
        allow_hyphen_values = true,
        conflicts_with_all = ["part", "store_key"]
    )]
    key_flag: Option<String>,

    /// One part of a tuple key (`key = (tenant, id)`), in order: --part acme --part 42.
    /// Instead of KEY
    #[arg(
        long,
        value_name = "PART",
        allow_hyphen_values = true,
        conflicts_with_all = ["principal", "http", "store_key"]
    )]
    part: Vec<String>,

    /// A record of the HTTP layer (`idem::http::IdempotencyLayer`) of this principal: what
    /// the layer's `principal` closure returned for the request (such as its API key); KEY is
    /// the request's Idempotency-Key. Stored as a hash, never printed
    #[arg(
        long,
        value_name = "PRINCIPAL",
        allow_hyphen_values = true,
        conflicts_with = "store_key"
    )]
    principal: Option<String>,

    /// A record of the HTTP layer without a principal (a layer with no `principal` closure);
    /// KEY is the request's Idempotency-Key
    #[arg(long, conflicts_with_all = ["principal", "store_key"])]
    http: bool,

    /// The store key as it is stored, such as a log line shows it (`idem:billing.invoice:inv-42`):
    /// looked up as it is, without SCOPE or a key
    #[arg(long = "store-key", value_name = "RAW", allow_hyphen_values = true)]
    store_key: Option<String>,
}

/// A record named by the arguments: the scope (empty for a store key), its [`RecordKey`], and
/// how it was named, for the output.
#[derive(Debug)]
pub(crate) struct Named {
    pub(crate) scope: String,
    pub(crate) key: RecordKey,
    form: Form,
}

#[derive(Debug)]
enum Form {
    One(String),
    Parts(Vec<String>),
    Http { key: String, principal: bool },
    Stored,
}

impl Target {
    /// The record the arguments name, or why they name none (a usage error).
    pub(crate) fn named(&self) -> Result<Named, String> {
        if let Some(raw) = &self.store_key {
            return Ok(Named {
                scope: String::new(),
                key: RecordKey::stored(raw.as_str()),
                form: Form::Stored,
            });
        }
        let scope = self.scope.clone().unwrap_or_default();
        let key = self.key.as_ref().or(self.key_flag.as_ref());
        let form = match (key, self.part.is_empty()) {
            (None, false) => Form::Parts(self.part.clone()),
            (Some(key), true) if self.http || self.principal.is_some() => Form::Http {
                key: key.clone(),
                principal: self.principal.is_some(),
            },
            (Some(key), true) => Form::One(key.clone()),
            (Some(_), false) => return Err("give a KEY or --part, not both".to_owned()),
            (None, true) => {
                return Err(
                    "which key? give KEY (or --key=KEY), --part for each part of a tuple key, \
                     or --store-key RAW"
                        .to_owned(),
                );
            }
        };
        let key = match &form {
            Form::One(key) => RecordKey::one(key),
            Form::Parts(parts) => RecordKey::parts(parts),
            Form::Http { key, .. } => RecordKey::http(self.principal.as_deref(), key),
            Form::Stored => unreachable!("a store key is returned above"),
        };
        Ok(Named { scope, key, form })
    }
}

impl Named {
    /// The fields that say which record this is, for a JSON answer: the scope (null for a store
    /// key), and the key (`key`), the parts (`parts`) or the HTTP request's key (`key`,
    /// `http`, and whether a principal was given: never the principal itself).
    pub(crate) fn json(&self, store_key: &str) -> Value {
        let scope = match self.form {
            Form::Stored => Value::Null,
            _ => Value::from(self.scope.as_str()),
        };
        let mut answer = json!({ "scope": scope, "store_key": store_key });
        let fields = match &self.form {
            Form::One(key) => json!({ "key": key }),
            Form::Parts(parts) => json!({ "parts": parts }),
            Form::Http { key, principal } => {
                json!({ "key": key, "http": true, "with_principal": principal })
            }
            Form::Stored => json!({}),
        };
        if let (Value::Object(answer), Value::Object(fields)) = (&mut answer, fields) {
            answer.extend(fields);
        }
        answer
    }

    /// What was looked up, for a message: `idem:s:k, the store key of the single key `k` of
    /// scope `s``.
    fn looked_up(&self, store_key: &str) -> String {
        let scope = &self.scope;
        match &self.form {
            Form::One(key) => {
                format!("{store_key}, the store key of the single key `{key}` of scope `{scope}`")
            }
            Form::Parts(parts) => format!(
                "{store_key}, the store key of the tuple key ({}) of scope `{scope}`",
                parts
                    .iter()
                    .map(|part| format!("`{part}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Form::Http { key, principal } => format!(
                "{store_key}, the store key of the HTTP request key `{key}` {} in scope `{scope}`",
                if *principal {
                    "of the principal given"
                } else {
                    "without a principal"
                }
            ),
            Form::Stored => format!("{store_key}, the store key given"),
        }
    }

    /// Why nothing may have been found, and the other ways to name the record.
    pub(crate) fn hint(&self, store_key: &str) -> String {
        let mut others = Vec::new();
        if !matches!(self.form, Form::One(_)) {
            others.push("a single key (`key = id`): SCOPE KEY");
        }
        if !matches!(self.form, Form::Parts(_)) {
            others.push("a tuple key (`key = (tenant, id)`): --part TENANT --part ID");
        }
        if !matches!(self.form, Form::Http { .. }) {
            others.push(
                "a request of the HTTP layer: --principal P KEY, or --http KEY without a \
                 principal (scope `http` unless the layer sets one)",
            );
        }
        if !matches!(self.form, Form::Stored) {
            others.push("the exact key of a log line: --store-key RAW");
        }
        format!(
            "looked up {}. Tuple keys and HTTP keys are encoded differently from single keys; \
             for {}. Check --prefix too; `idem stats --by-scope` lists the scopes in the store.",
            self.looked_up(store_key),
            others.join("; for ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        target: Target,
    }

    fn named(args: &[&str]) -> Result<Named, String> {
        let line = Line::try_parse_from(std::iter::once("idem").chain(args.iter().copied()))
            .map_err(|error| error.to_string())?;
        line.target.named()
    }

    #[test]
    fn each_form_names_its_record_key() {
        let of = |args: &[&str]| named(args).map(|named| (named.scope, named.key));
        assert_eq!(of(&["s", "k"]), Ok(("s".into(), RecordKey::one("k"))));
        assert_eq!(
            of(&["s", "--", "-42"]),
            Ok(("s".into(), RecordKey::one("-42")))
        );
        assert_eq!(
            of(&["s", "--key=-42"]),
            Ok(("s".into(), RecordKey::one("-42")))
        );
        assert_eq!(
            of(&["s", "--key", "-42"]),
            Ok(("s".into(), RecordKey::one("-42")))
        );
        assert_eq!(
            of(&["s", "--part", "a", "--part=-1"]),
            Ok(("s".into(), RecordKey::parts(["a", "-1"])))
        );
        assert_eq!(
            of(&["http", "k", "--principal", "alice"]),
            Ok(("http".into(), RecordKey::http(Some("alice"), "k")))
        );
        assert_eq!(
            of(&["http", "--http", "k"]),
            Ok(("http".into(), RecordKey::http(None, "k")))
        );
        assert_eq!(
            of(&["--store-key", "idem:s:k"]),
            Ok((String::new(), RecordKey::stored("idem:s:k")))
        );
    }

    #[test]
    fn arguments_that_name_no_record_or_two_are_refused() {
        for args in [
            &["s"][..],
            &["s", "k", "--part", "a"],
            &["s", "k", "--key", "j"],
            &["s", "--store-key", "x"],
            &["--part", "a", "--principal", "p", "s"],
            &["s", "k", "--http", "--principal", "p"],
            &[],
        ] {
            assert!(named(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn the_hint_names_the_key_looked_up_and_the_other_forms() {
        let single = named(&["shop", "o-1"]).unwrap();
        let hint = single.hint("idem:shop:o-1");
        assert!(
            hint.contains("looked up idem:shop:o-1, the store key of the single key `o-1`"),
            "{hint}"
        );
        for flag in [
            "--part",
            "--principal",
            "--http",
            "--store-key",
            "--by-scope",
        ] {
            assert!(hint.contains(flag), "{flag} in {hint}");
        }
        let parts = named(&["shop", "--part", "a", "--part", "b"]).unwrap();
        let hint = parts.hint("idem:shop:a:b");
        assert!(
            hint.contains("tuple key (`a`, `b`)") && hint.contains("SCOPE KEY"),
            "{hint}"
        );
        assert!(!hint.contains("--part TENANT"), "{hint}");
        let http = named(&["http", "k", "--principal", "sk_secret"]).unwrap();
        assert!(!http.hint("x").contains("sk_secret"));
        assert!(!http.json("x").to_string().contains("sk_secret"));
    }
}
