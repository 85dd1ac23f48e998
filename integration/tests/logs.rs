//! What idem writes to logs: a span per call with its scope, its key as stored and its
//! outcome, and warnings or errors that name the key the same way. With `hash_keys` no raw
//! key appears in any span or event; without it, logs follow the store's readable/hashed rule.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::testing::{DownStore, Forwarding, Op};
use idem::{Call, Config, FailMode, Idem, MemoryStore, Status, StoreErrorKind};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The fields of a span or an event, by name, in the order they were recorded.
type Line = Vec<(String, String)>;

/// Everything a subscriber is given: each span (its id and fields as recorded) and event.
#[derive(Default, Clone)]
struct Captured {
    spans: Arc<Mutex<Vec<(u64, Line)>>>,
    events: Arc<Mutex<Vec<Line>>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = vec![("span".to_owned(), attrs.metadata().name().to_owned())];
        attrs.record(&mut Fields(&mut fields));
        self.spans.lock().unwrap().push((id.into_u64(), fields));
    }
    fn on_record(&self, id: &Id, values: &SpanRecord<'_>, _: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some((_, fields)) = spans.iter_mut().find(|(s, _)| *s == id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = vec![("level".to_owned(), event.metadata().level().to_string())];
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(fields);
    }
}

impl Captured {
    /// Runs `test` on a runtime of its own with this subscriber.
    fn run<F: std::future::Future>(&self, test: F) -> F::Output {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || runtime.block_on(test))
    }

    /// Every captured line, as text.
    fn text(&self) -> String {
        let mut out = String::new();
        for (_, span) in self.spans.lock().unwrap().iter() {
            writeln!(out, "span {span:?}").unwrap();
        }
        for event in self.events.lock().unwrap().iter() {
            writeln!(out, "event {event:?}").unwrap();
        }
        out
    }

    /// The `key` field of every warning and error.
    fn event_keys(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| {
                e.iter()
                    .any(|(k, v)| k == "level" && (v == "WARN" || v == "ERROR"))
            })
            .map(|e| {
                e.iter()
                    .find(|(k, _)| k == "key")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("a warning without a key field: {e:?}"))
            })
            .collect()
    }

    fn idem_spans(&self) -> Vec<Vec<(String, String)>> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|(_, fields)| fields[0].1 == "idem")
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A memory store whose writes fail: completions and releases report the store unavailable.
fn writes_fail() -> idem::StoreHandle {
    Forwarding::new(MemoryStore::new())
        .fail(Op::Complete, StoreErrorKind::Unavailable)
        .fail(Op::Release, StoreErrorKind::Unavailable)
        .into()
}

const SCOPE: &str = "shop::charge";
const KEY: &str = "alice@example.com";

/// Runs every call that logs a warning or an error, with `config`'s prefix and `hash_keys`.
async fn every_logged_case(config: Config) {
    let on = |store: &dyn Fn() -> idem::StoreHandle| Idem::with_settings(store(), &config);
    // Stored, then replayed: no warning, a span each.
    let memory = MemoryStore::new();
    let idem = on(&|| memory.clone().into());
    for _ in 0..2 {
        idem.scope(Call::new(SCOPE, KEY).run(async { 1 }))
            .await
            .unwrap();
    }
    // The store down, fail-open: a warning.
    let open = Idem::with_settings(DownStore, &config.clone().fail_mode(FailMode::Open));
    let ran = open
        .scope(Call::new(SCOPE, KEY).run(async { 2 }))
        .await
        .unwrap();
    assert_eq!(ran.status, Status::Unprotected);
    // A result that cannot be stored, a completion that fails, a release that fails.
    let failing = on(&writes_fail);
    let ran = failing
        .scope(Call::new(SCOPE, KEY).run(async { 3 }))
        .await
        .unwrap();
    assert_eq!(ran.status, Status::NotStored);
    // (Another store: the failed completion left the claim to end with its lease.)
    let failing = on(&writes_fail);
    let ran = failing
        .scope(Call::new(SCOPE, KEY).run_result(async { Err::<u8, _>("transient") }))
        .await
        .unwrap();
    assert_eq!(ran.value, Err("transient"));
    let unstorable = on(&|| MemoryStore::new().into());
    let ran = unstorable
        .scope(Call::new(SCOPE, KEY).run(async { f64::NAN }))
        .await
        .unwrap();
    assert_eq!(ran.status, Status::NotStored);
    // A lease lost: the body outlives its lease without renewal, another call takes the key.
    let memory = MemoryStore::new();
    let lost = on(&|| memory.clone().into());
    let slow = lost.scope(
        Call::new(SCOPE, KEY)
            .lease(Duration::from_millis(5))
            .heartbeat(false)
            .run(async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                4
            }),
    );
    let late = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lost.scope(Call::new(SCOPE, KEY).run(async { 5 }))
            .await
            .unwrap()
    };
    let (slow, late) = tokio::join!(slow, late);
    assert_eq!(slow.unwrap().status, Status::LeaseLost);
    assert_eq!(late.status, Status::Executed);
}

#[test]
fn with_hash_keys_no_log_line_holds_a_raw_key() {
    let captured = Captured::default();
    captured.run(every_logged_case(Config::default().hash_keys(true)));
    let text = captured.text();
    assert!(!text.contains("alice"), "a raw key in the logs:\n{text}");
    let keys = captured.event_keys();
    assert!(
        keys.len() >= 5,
        "every case logged a warning or an error:\n{text}"
    );
    for key in &keys {
        let digest = key
            .strip_prefix("idem:shop.charge:#")
            .unwrap_or_else(|| panic!("{key}"));
        assert_eq!(digest.len(), 64, "{key}");
    }
    let spans = captured.idem_spans();
    assert!(spans.len() >= 8, "a span per call:\n{text}");
    for span in &spans {
        assert!(
            keys.contains(&field(span, "key").unwrap().to_owned()),
            "{span:?}"
        );
    }
}

#[test]
fn without_hash_keys_logs_name_keys_as_the_store_does() {
    let captured = Captured::default();
    captured.run(every_logged_case(Config::default()));
    let text = captured.text();
    let keys = captured.event_keys();
    assert!(keys.len() >= 5, "{text}");
    for key in &keys {
        assert_eq!(key, "idem:shop.charge:alice@example.com");
    }
    // A key the store hashes (too long) is hashed in the logs too.
    let captured = Captured::default();
    let long = "x".repeat(500);
    captured.run(async {
        Call::new(SCOPE, &long)
            .store(DownStore)
            .run(async { 1 })
            .await
            .unwrap_err();
    });
    let text = captured.text();
    assert!(!text.contains(&long[..100]), "{text}");
    assert!(text.contains("idem:shop.charge:#"), "{text}");
}

#[test]
fn each_call_has_a_span_with_scope_key_and_outcome() {
    let captured = Captured::default();
    captured.run(async {
        let store = MemoryStore::new();
        let idem = Idem::with_settings(store, &Config::default().hash_keys(true));
        for _ in 0..2 {
            idem.scope(Call::new(SCOPE, KEY).run(async { 1 }))
                .await
                .unwrap();
        }
    });
    let spans = captured.idem_spans();
    assert_eq!(spans.len(), 2, "one span per call: {spans:?}");
    for (span, outcome) in spans.iter().zip(["executed", "replayed"]) {
        assert_eq!(field(span, "scope"), Some(SCOPE), "{span:?}");
        assert_eq!(field(span, "outcome"), Some(outcome), "{span:?}");
        let key = field(span, "key").expect("the key field is recorded");
        assert!(key.starts_with("idem:shop.charge:#"), "{key}");
    }
}

/// A recorded step has a span of its own, as a call does, with its outcome (a step is counted
/// with its call, but its span says how it ended).
#[test]
fn a_step_has_a_span_with_its_outcome() {
    let captured = Captured::default();
    captured.run(async {
        let idem = Idem::with_settings(MemoryStore::new(), &Config::default());
        let ran = idem
            .scope(Call::new(SCOPE, KEY).run(async {
                idem::step("reserve", async { 1 })
                    .await
                    .expect("the step is recorded")
            }))
            .await
            .unwrap();
        assert_eq!(ran.value, 1);
    });
    let spans = captured.idem_spans();
    assert_eq!(spans.len(), 2, "the call's span and its step's: {spans:?}");
    for span in &spans {
        assert_eq!(field(span, "outcome"), Some("executed"), "{span:?}");
    }
}

/// The lines a `log` logger was given, as `target: message`.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{}: {}", record.target(), record.args());
        LOGGED.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

/// With no tracing subscriber, a `log` logger that prints debug lines still gets each call's
/// span, through tracing's `log` feature (which sqlx turns on): idem skips making its span
/// only when neither can print it. A process of its own: the logger and the absence of a
/// subscriber are process-wide (nextest runs each test in its own).
#[test]
fn a_log_logger_gets_each_call_s_span_without_a_subscriber() {
    assert!(
        !tracing::dispatcher::has_been_set(),
        "this test needs a process where no tracing subscriber was ever set (run it with nextest)"
    );
    log::set_logger(&Logger).expect("the only logger of this process");
    log::set_max_level(log::LevelFilter::Debug);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let idem = Idem::with_settings(MemoryStore::new(), &Config::default());
        for _ in 0..2 {
            idem.scope(Call::new(SCOPE, KEY).run(async { 1 }))
                .await
                .unwrap();
        }
    });
    let logged = LOGGED.lock().unwrap().clone();
    let spans = logged
        .iter()
        .filter(|line| line.contains("idem; scope=shop::charge"))
        .count();
    assert_eq!(spans, 2, "one span line per call: {logged:#?}");
}
