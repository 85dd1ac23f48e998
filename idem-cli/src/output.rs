//! What the `idem` command prints: an inspection and the counts of `stats`, as text for a
//! person and as JSON fields for a program.

use std::time::Duration;

use idem::{Inspection, Stats};
use serde_json::{Value, json};

/// Adds the fields of `inspection` to the JSON object `answer`.
pub(crate) fn inspected(answer: &mut Value, inspection: &Inspection) {
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
        Inspection::Abandoned {
            attempt,
            since,
            steps,
        } => json!({
            "state": "abandoned",
            "attempt": attempt,
            "since": humantime::format_rfc3339_millis(*since).to_string(),
            "steps_completed": steps,
        }),
        // `Absent`, and whatever a later version of the library reports.
        _ => json!({ "state": "absent" }),
    };
    if let (Value::Object(answer), Value::Object(fields)) = (answer, fields) {
        answer.extend(fields);
    }
}

/// `inspection` as text.
pub(crate) fn inspection_text(store_key: &str, inspection: &Inspection) -> String {
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
        Inspection::Abandoned {
            attempt,
            since,
            steps,
        } => vec![
            (
                "state",
                "abandoned (an attempt began and never ended: forget or complete the key)"
                    .to_owned(),
            ),
            ("attempt", attempt.to_string()),
            (
                "since",
                humantime::format_rfc3339_millis(*since).to_string(),
            ),
            (
                "steps done",
                steps.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            ),
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
pub(crate) fn stats_text(
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
         counted:      {counted}\n\
         tokens:       {} live, not redeemed; {} redeemed (server-issued tokens, apart from the records)",
        stats.in_progress,
        stats.completed,
        stats.total(),
        stats.tokens,
        stats.redeemed_tokens
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

/// The counts per scope of `stats` as text: a line per scope, as stored and as calls name it.
pub(crate) fn scopes_text(stats: &Stats) -> String {
    let Some(scopes) = &stats.scopes else {
        return "scopes:       not counted: this store does not count by scope".to_owned();
    };
    let mut text = format!(
        "scopes:       {} among the records counted{}",
        scopes.len(),
        if stats.exact { "" } else { " (a sample)" }
    );
    let width = scopes
        .iter()
        .map(|counted| counted.scope.chars().count())
        .chain([17])
        .max()
        .unwrap_or(17);
    text.push_str(&format!(
        "\n  {:<width$}  {:>11}  {:>9}  NAME IN CODE",
        "SCOPE (AS STORED)", "IN PROGRESS", "COMPLETED"
    ));
    for counted in scopes {
        let name = counted
            .name()
            .unwrap_or_else(|| "(hashed: a long or unprintable scope)".to_owned());
        text.push_str(&format!(
            "\n  {:<width$}  {:>11}  {:>9}  {name}",
            counted.scope, counted.in_progress, counted.completed
        ));
    }
    text
}

/// The counts per scope of `stats` as JSON: an array ordered by scope as stored, or null when
/// the store does not count by scope.
pub(crate) fn scopes_json(stats: &Stats) -> Value {
    match &stats.scopes {
        None => Value::Null,
        Some(scopes) => scopes
            .iter()
            .map(|counted| {
                json!({
                    "scope": counted.scope,
                    "name": counted.name(),
                    "in_progress": counted.in_progress,
                    "completed": counted.completed,
                    "total": counted.total(),
                })
            })
            .collect(),
    }
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

/// A duration in whole milliseconds.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn scopes_print_as_stored_and_as_named() {
        let mut stats = Stats::new(0, 0, true);
        stats.count("idem:", b"idem:billing.invoice:a", false);
        stats.count("idem:", b"idem:billing.invoice:b", true);
        stats.count("idem:", b"idem:invoice:a", false);
        let text = scopes_text(&stats);
        assert!(
            text.starts_with("scopes:       2 among the records counted\n"),
            "{text}"
        );
        assert!(
            text.contains("billing.invoice              1          1  billing::invoice"),
            "{text}"
        );
        let json = scopes_json(&stats);
        assert_eq!(json[1]["scope"], "invoice");
        assert_eq!(
            (json[0]["in_progress"].as_u64(), json[0]["total"].as_u64()),
            (Some(1), Some(2))
        );
        assert!(scopes_text(&Stats::new(1, 0, true)).contains("not counted"));
        assert_eq!(scopes_json(&Stats::new(1, 0, true)), Value::Null);
    }
}
