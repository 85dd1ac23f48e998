//! Every call runs in a `tracing` span that names its scope and outcome, and a hash of its key
//! (never the key itself).

use std::sync::{Arc, Mutex};

use idem::{Call, MemoryStore};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The fields of one span, in the order they were recorded; the first is its id.
type SpanFields = Vec<(String, String)>;

#[derive(Default, Clone)]
struct Spans(Arc<Mutex<Vec<SpanFields>>>);

struct Fields<'a>(&'a mut SpanFields);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "idem" {
            let mut spans = self.0.lock().unwrap();
            let mut fields = vec![("id".to_owned(), id.into_u64().to_string())];
            attrs.record(&mut Fields(&mut fields));
            spans.push(fields);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        let id = id.into_u64().to_string();
        if let Some(span) = spans.iter_mut().find(|s| s[0].1 == id) {
            values.record(&mut Fields(span));
        }
    }
}

#[test]
fn each_call_has_a_span_with_scope_hashed_key_and_outcome() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let store = MemoryStore::new();
            for _ in 0..2 {
                Call::new("shop::charge", "alice@example.com")
                    .store(store.clone())
                    .run(async { 1 })
                    .await
                    .unwrap();
            }
        })
    });
    let spans = spans.0.lock().unwrap();
    assert_eq!(spans.len(), 2, "one span per call: {spans:?}");
    for (span, outcome) in spans.iter().zip(["executed", "replayed"]) {
        let field = |name: &str| {
            span.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(field("scope"), Some("shop::charge"), "{span:?}");
        assert_eq!(field("outcome"), Some(outcome), "{span:?}");
        let key = field("key").expect("the key field is recorded");
        assert_eq!(key.len(), 16, "a short hash: {key}");
        assert!(
            !span.iter().any(|(_, v)| v.contains("alice")),
            "no raw key in the span: {span:?}"
        );
    }
}
