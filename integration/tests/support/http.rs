//! The HTTP layer's behaviour, against any store: an axum server on a loopback port, a real
//! HTTP client, and one function per case. [`http_suite!`] runs every case on one store.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idem::StoreHandle;
use idem::http::IdempotencyLayer;
use idem::testing::Forwarding;
use tokio::sync::{mpsc, watch};

/// Writes one `#[tokio::test]` per case of the suite, on the store that `$make` (an async
/// expression of `(store, guard)`) returns; the guard lives as long as the test.
#[macro_export]
macro_rules! http_suite {
    ($make:expr) => {
        $crate::http_suite!(@cases $make;
            retry_replays_status_headers_and_body,
            concurrent_duplicates_run_once,
            in_flight_key_is_409_when_rejecting,
            same_key_other_request_is_422,
            bad_or_missing_keys_are_400,
            optional_key_and_other_methods_pass_through,
            principals_never_share_responses,
            oversized_request_bodies_are_413,
            oversized_responses_pass_through_unstored,
            server_errors_release_the_key,
            server_errors_stored_when_configured,
            issued_tokens_flow,
        );
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make.await;
                $crate::support::http::$case(::idem::StoreHandle::from(store)).await;
            }
        )*
    };
}

/// How long any one step may take before the test fails (a bound, not a synchronization).
const PATIENCE: Duration = Duration::from_secs(30);

type ClientBody = BoxBody<Bytes, Infallible>;

/// A test server: the routes below behind the layer, and what their handlers did.
pub struct App {
    addr: SocketAddr,
    client: Client<HttpConnector, ClientBody>,
    shared: Arc<Shared>,
    gate: watch::Sender<bool>,
    entered: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    runs: AtomicUsize,
    gate: watch::Receiver<bool>,
    entered: mpsc::UnboundedSender<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A layer scope no other test or run uses, so that tests may share a store.
fn unique_scope() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "http-test-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The principal of a request: its bearer token, if any.
pub fn bearer(request: &http::request::Parts) -> Option<String> {
    let value = request.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

/// The layer of most cases: on `store`, key required, principal from the bearer token.
pub fn layer(store: &StoreHandle) -> IdempotencyLayer {
    IdempotencyLayer::new()
        .store(store.clone())
        .scope(unique_scope())
        .required(true)
        .principal(bearer)
        .wait(PATIENCE)
}

/// `POST /orders`: counts its runs, waits at the gate, answers 201 with the order.
async fn create_order(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let n = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let _ = shared.entered.send(());
    let mut gate = shared.gate.clone();
    let _ = gate.wait_for(|open| *open).await;
    let order = serde_json::json!({
        "order": n,
        "request": String::from_utf8_lossy(&body),
    });
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/orders/{n}")),
            (HeaderName::from_static("x-request-id"), format!("req-{n}")),
        ],
        axum::Json(order),
    )
        .into_response()
}

/// `POST /flaky`: 500 on its first run, 201 after.
async fn flaky(State(shared): State<Arc<Shared>>) -> Response {
    let n = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        (StatusCode::INTERNAL_SERVER_ERROR, "the database is down").into_response()
    } else {
        (StatusCode::CREATED, format!("created on run {n}")).into_response()
    }
}

/// `POST /export`: 4096 bytes with a `Content-Length`.
async fn export(State(shared): State<Arc<Shared>>) -> Response {
    let n = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::OK, format!("{n}").repeat(4096)).into_response()
}

/// `POST /export-stream`: 4096 bytes in four chunks, without a `Content-Length`.
async fn export_stream(State(shared): State<Arc<Shared>>) -> Response {
    let n = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let (mut sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(async move {
        for _ in 0..4 {
            let chunk = Bytes::from(format!("{n}").repeat(1024));
            if sender.send_data(chunk).await.is_err() {
                return;
            }
        }
    });
    Response::new(Body::new(body))
}

/// `GET /orders`: counts its runs.
async fn list_orders(State(shared): State<Arc<Shared>>) -> Response {
    let n = shared.runs.fetch_add(1, Ordering::SeqCst) + 1;
    format!("list {n}").into_response()
}

impl App {
    /// Starts the server on a free loopback port with `layer` around every route.
    pub async fn serve(layer: IdempotencyLayer) -> App {
        App::serve_router(|router| router.layer(layer)).await
    }

    /// Starts the server on a free loopback port; `wrap` adds the layers.
    pub async fn serve_router(wrap: impl FnOnce(Router) -> Router) -> App {
        let (gate, gate_rx) = watch::channel(true);
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            runs: AtomicUsize::new(0),
            gate: gate_rx,
            entered: entered_tx,
        });
        let router = Router::new()
            .route("/orders", post(create_order).get(list_orders))
            .route("/flaky", post(flaky))
            .route("/export", post(export))
            .route("/export-stream", post(export_stream));
        let app = wrap(router.with_state(shared.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the test server");
        });
        App {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            shared,
            gate,
            entered: tokio::sync::Mutex::new(entered),
            server,
        }
    }

    /// How many times the handlers ran.
    pub fn runs(&self) -> usize {
        self.shared.runs.load(Ordering::SeqCst)
    }

    /// Holds `POST /orders` handlers at the gate until [`open`](App::open).
    pub fn close(&self) {
        self.gate.send_replace(false);
    }

    /// Lets the handlers held at the gate finish.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Waits until a `POST /orders` handler has started.
    pub async fn entered(&self) {
        let mut entered = self.entered.lock().await;
        tokio::time::timeout(PATIENCE, entered.recv())
            .await
            .expect("a handler starts in time")
            .expect("the server is alive");
    }

    /// A request to `path` of this server.
    pub fn post(&self, path: &str) -> Req {
        self.request(Method::POST, path)
    }

    /// A request with `method` to `path` of this server.
    pub fn request(&self, method: Method, path: &str) -> Req {
        Req {
            client: self.client.clone(),
            request: Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.addr)),
            body: Full::new(Bytes::new()).boxed(),
        }
    }
}

/// A request being built.
pub struct Req {
    client: Client<HttpConnector, ClientBody>,
    request: http::request::Builder,
    body: ClientBody,
}

impl Req {
    /// Sends `key` as the `Idempotency-Key`.
    pub fn key(self, key: &str) -> Req {
        self.header("idempotency-key", key.as_bytes())
    }

    /// Authenticates as `principal`.
    pub fn auth(self, principal: &str) -> Req {
        self.header("authorization", format!("Bearer {principal}").as_bytes())
    }

    /// Adds a header with raw bytes as its value.
    pub fn header(mut self, name: &str, value: &[u8]) -> Req {
        let value = HeaderValue::from_bytes(value).expect("a header value");
        self.request = self.request.header(name, value);
        self
    }

    /// Sends `body` (with a `Content-Length`).
    pub fn body(mut self, body: impl Into<Bytes>) -> Req {
        self.body = Full::new(body.into()).boxed();
        self
    }

    /// Sends `chunks` as a streamed body, without a `Content-Length`.
    pub fn streamed(mut self, chunks: Vec<Bytes>) -> Req {
        let (mut sender, body) =
            http_body_util::channel::Channel::<Bytes, Infallible>::new(chunks.len().max(1));
        for chunk in chunks {
            sender
                .try_send(http_body::Frame::data(chunk))
                .map_err(|_| ())
                .expect("the channel holds every chunk");
        }
        self.body = body.boxed();
        self
    }

    /// Sends the request and reads the whole response.
    pub async fn send(self) -> Reply {
        let request = self.request.body(self.body).expect("a valid request");
        let response = tokio::time::timeout(PATIENCE, self.client.request(request))
            .await
            .expect("the server answers in time")
            .expect("the server answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("the whole body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Whether the layer says this response was replayed.
    pub fn replayed(&self) -> bool {
        match self.headers.get("idempotent-replayed") {
            None => false,
            Some(value) => {
                assert_eq!(value, "true", "Idempotent-Replayed is true when present");
                true
            }
        }
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts that this is the layer's `application/problem+json` answer with `status` and
    /// `code`, and returns its detail.
    pub fn assert_problem(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("a JSON problem");
        assert_eq!(json["status"], status, "{json}");
        assert_eq!(json["code"], code, "{json}");
        assert_eq!(json["type"], "about:blank", "{json}");
        assert!(json["title"].is_string(), "{json}");
        json["detail"].as_str().expect("a detail").to_owned()
    }
}

/// A retry gets the first response's status, named headers and body, marked replayed; the
/// handler ran once.
pub async fn retry_replays_status_headers_and_body(store: StoreHandle) {
    let app = App::serve(layer(&store)).await;
    let order = || {
        app.post("/orders")
            .key("order-7f3a")
            .auth("alice")
            .body(r#"{"item":"book"}"#)
    };
    let first = order().send().await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert!(!first.replayed());
    assert_eq!(first.headers[header::LOCATION], "/orders/1");
    assert_eq!(first.headers["x-request-id"], "req-1");

    let retry = order().send().await;
    assert_eq!(app.runs(), 1, "the retry must not run the handler");
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body);
    assert_eq!(
        retry.headers[header::CONTENT_TYPE],
        first.headers[header::CONTENT_TYPE]
    );
    assert_eq!(retry.headers[header::LOCATION], "/orders/1");
    assert!(
        retry.headers.get("x-request-id").is_none(),
        "only the named headers are replayed"
    );
    let json: serde_json::Value = serde_json::from_slice(&retry.body).expect("JSON");
    assert_eq!(json["order"], 1);
}

/// 20 concurrent requests with one key: the handler runs once, the 19 others wait for it and
/// all 20 get its response.
pub async fn concurrent_duplicates_run_once(store: StoreHandle) {
    const DUPLICATES: usize = 20;
    // Counts the distinct callers told that the key they claim is in progress: the duplicates
    // now waiting.
    let watched = Forwarding::new(store);
    let app = Arc::new(App::serve(layer(&StoreHandle::new(watched.clone()))).await);
    app.close();
    let mut requests = Vec::new();
    for _ in 0..DUPLICATES {
        let app = app.clone();
        requests.push(tokio::spawn(async move {
            app.post("/orders")
                .key("burst-1")
                .auth("alice")
                .body("one order")
                .send()
                .await
        }));
    }
    app.entered().await;
    // Every duplicate has found the key in progress before the first one may finish.
    tokio::time::timeout(PATIENCE, watched.told_in_progress(DUPLICATES - 1))
        .await
        .expect("all duplicates wait in time");
    app.open();
    let mut replies = Vec::new();
    for request in requests {
        replies.push(request.await.expect("the request task"));
    }
    assert_eq!(app.runs(), 1, "one execution for {DUPLICATES} duplicates");
    let first = replies
        .iter()
        .find(|r| !r.replayed())
        .expect("one response is the original");
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert_eq!(reply.body, first.body);
    }
    let replayed = replies.iter().filter(|r| r.replayed()).count();
    assert_eq!(replayed, DUPLICATES - 1);
}

/// Holds `app`'s handler, starts a request with `key` and waits until its body runs, then sends
/// a second request with the same key and principal: the first's task (it finishes once the
/// app is opened) and the second's reply.
pub async fn second_while_first_runs(
    app: &Arc<App>,
    key: &'static str,
) -> (tokio::task::JoinHandle<Reply>, Reply) {
    app.close();
    let first = {
        let app = app.clone();
        tokio::spawn(async move {
            app.post("/orders")
                .key(key)
                .auth("alice")
                .body("x")
                .send()
                .await
        })
    };
    app.entered().await;
    let second = app
        .post("/orders")
        .key(key)
        .auth("alice")
        .body("x")
        .send()
        .await;
    (first, second)
}

/// With `reject_in_flight`, a request whose key is running is answered 409 at once, with a
/// `Retry-After` within the lease; once the first completes, the key replays.
pub async fn in_flight_key_is_409_when_rejecting(store: StoreHandle) {
    let lease = Duration::from_secs(20);
    let app = Arc::new(App::serve(layer(&store).lease(lease).reject_in_flight()).await);
    let (first, second) = second_while_first_runs(&app, "k-409").await;
    second.assert_problem(409, "in-progress");
    let retry_after: u64 = second.headers[header::RETRY_AFTER]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert!(
        (1..=lease.as_secs()).contains(&retry_after),
        "Retry-After is the lease left of the running request: {retry_after}"
    );
    app.open();
    let first = first.await.expect("the first request");
    assert_eq!(first.status, StatusCode::CREATED);
    let third = app
        .post("/orders")
        .key("k-409")
        .auth("alice")
        .body("x")
        .send()
        .await;
    assert!(third.replayed());
    assert_eq!(third.body, first.body);
    assert_eq!(app.runs(), 1);
}

/// The same key with another body, path or method is 422, and the handler does not run.
pub async fn same_key_other_request_is_422(store: StoreHandle) {
    let app = App::serve(layer(&store).methods([Method::POST, Method::PATCH])).await;
    let first = app
        .post("/orders")
        .key("k-422")
        .auth("alice")
        .body("2 books")
        .send()
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let other_body = app
        .post("/orders")
        .key("k-422")
        .auth("alice")
        .body("3 books")
        .send()
        .await;
    let detail = other_body.assert_problem(422, "key-mismatch");
    assert!(detail.contains("different request"), "{detail}");
    let other_path = app
        .post("/orders?express=1")
        .key("k-422")
        .auth("alice")
        .body("2 books")
        .send()
        .await;
    other_path.assert_problem(422, "key-mismatch");
    let other_method = app
        .request(Method::PATCH, "/orders")
        .key("k-422")
        .auth("alice")
        .body("2 books")
        .send()
        .await;
    other_method.assert_problem(422, "key-mismatch");
    assert_eq!(app.runs(), 1);
    let same = app
        .post("/orders")
        .key("k-422")
        .auth("alice")
        .body("2 books")
        .send()
        .await;
    assert!(same.replayed());
    assert_eq!(same.body, first.body);
}

/// A required key that is missing, too long, not printable or repeated is 400; the handler
/// does not run. 255 printable bytes is a key.
pub async fn bad_or_missing_keys_are_400(store: StoreHandle) {
    let app = App::serve(layer(&store)).await;
    let order = || app.post("/orders").auth("alice").body("x");
    order().send().await.assert_problem(400, "missing-key");
    let too_long = "k".repeat(256);
    let detail = order()
        .key(&too_long)
        .send()
        .await
        .assert_problem(400, "invalid-key");
    assert!(detail.contains("255"), "{detail}");
    order()
        .header("idempotency-key", b"a\tb")
        .send()
        .await
        .assert_problem(400, "invalid-key");
    order()
        .header("idempotency-key", "caf\u{e9}".as_bytes())
        .send()
        .await
        .assert_problem(400, "invalid-key");
    order()
        .header("idempotency-key", b"\"\"")
        .send()
        .await
        .assert_problem(400, "invalid-key");
    order()
        .key("one")
        .key("two")
        .send()
        .await
        .assert_problem(400, "invalid-key");
    assert_eq!(app.runs(), 0);

    let longest = "k".repeat(255);
    assert_eq!(
        order().key(&longest).send().await.status,
        StatusCode::CREATED
    );
    // The quoted form of the draft is the same key.
    let quoted = order()
        .header("idempotency-key", format!("\"{longest}\"").as_bytes())
        .send()
        .await;
    assert!(quoted.replayed());
    assert_eq!(app.runs(), 1);
}

/// Without `required`, a request without a key passes through; a method the layer does not
/// cover passes through even with a key.
pub async fn optional_key_and_other_methods_pass_through(store: StoreHandle) {
    let app = App::serve(layer(&store).required(false)).await;
    for _ in 0..2 {
        let reply = app.post("/orders").auth("alice").body("x").send().await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(!reply.replayed());
    }
    assert_eq!(app.runs(), 2);
    for n in 3..5 {
        let reply = app
            .request(Method::GET, "/orders")
            .key("k-get")
            .auth("alice")
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!reply.replayed());
        assert_eq!(reply.text(), format!("list {n}"));
    }
    assert_eq!(app.runs(), 4);
}

/// Two principals with the same key each get their own execution and response, never the
/// other's; a request without a principal is not stored at all.
pub async fn principals_never_share_responses(store: StoreHandle) {
    let app = App::serve(layer(&store)).await;
    let order = |who: &str| {
        app.post("/orders")
            .key("shared-key")
            .auth(who)
            .body("1 book")
    };
    let alice = order("alice").send().await;
    let bob = order("bob").send().await;
    assert_eq!(alice.status, StatusCode::CREATED);
    assert_eq!(bob.status, StatusCode::CREATED);
    assert!(!bob.replayed(), "bob must not get alice's response");
    assert_ne!(alice.body, bob.body);
    assert_eq!(app.runs(), 2);

    let alice_again = order("alice").send().await;
    let bob_again = order("bob").send().await;
    assert!(alice_again.replayed() && bob_again.replayed());
    assert_eq!(alice_again.body, alice.body);
    assert_eq!(bob_again.body, bob.body);
    assert_eq!(app.runs(), 2);

    // A different request under bob's name is bob's mismatch, not a replay of alice's.
    order("bob")
        .body("2 books")
        .send()
        .await
        .assert_problem(422, "key-mismatch");

    // No principal: passed through, nothing stored or replayed.
    for _ in 0..2 {
        let anonymous = app
            .post("/orders")
            .key("shared-key")
            .body("1 book")
            .send()
            .await;
        assert_eq!(anonymous.status, StatusCode::CREATED);
        assert!(!anonymous.replayed());
        assert_ne!(anonymous.body, alice.body);
    }
    assert_eq!(app.runs(), 4);
}

/// A keyed request body over `max_request_body` is 413, by its `Content-Length` or while it
/// streams; the handler does not run. A body at the limit is fine.
pub async fn oversized_request_bodies_are_413(store: StoreHandle) {
    let app = App::serve(layer(&store).max_request_body(1024)).await;
    let detail = app
        .post("/orders")
        .key("big-1")
        .auth("alice")
        .body(vec![b'x'; 1025])
        .send()
        .await
        .assert_problem(413, "body-too-large");
    assert!(detail.contains("1024"), "{detail}");
    app.post("/orders")
        .key("big-2")
        .auth("alice")
        .streamed(vec![Bytes::from(vec![b'y'; 700]); 2])
        .send()
        .await
        .assert_problem(413, "body-too-large");
    assert_eq!(app.runs(), 0);

    let at_limit = app
        .post("/orders")
        .key("big-3")
        .auth("alice")
        .streamed(vec![Bytes::from(vec![b'z'; 512]); 2])
        .send()
        .await;
    assert_eq!(at_limit.status, StatusCode::CREATED);
    assert_eq!(app.runs(), 1);
}

/// A response over `max_response_body` reaches the client whole but is not stored: the retry
/// runs the handler again. With and without a `Content-Length`.
pub async fn oversized_responses_pass_through_unstored(store: StoreHandle) {
    let app = App::serve(layer(&store).max_response_body(1024)).await;
    for (path, runs) in [("/export", [1, 2]), ("/export-stream", [3, 4])] {
        for run in runs {
            let reply = app
                .post(path)
                .key(&format!("export-{path}"))
                .auth("alice")
                .send()
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{path}");
            assert!(!reply.replayed(), "{path}");
            assert_eq!(reply.body.len(), 4096, "{path}");
            assert_eq!(reply.text(), format!("{run}").repeat(4096), "{path}");
        }
    }
    assert_eq!(app.runs(), 4);
}

/// A 5xx response releases the key: the retry runs the handler again, and its 2xx is stored.
pub async fn server_errors_release_the_key(store: StoreHandle) {
    let app = App::serve(layer(&store)).await;
    let call = || app.post("/flaky").key("flaky-1").auth("alice");
    let failed = call().send().await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.text(), "the database is down");
    let retried = call().send().await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert!(!retried.replayed());
    assert_eq!(retried.text(), "created on run 2");
    let replayed = call().send().await;
    assert!(replayed.replayed());
    assert_eq!(replayed.text(), "created on run 2");
    assert_eq!(app.runs(), 2);
}

/// With `release_server_errors(false)`, a 5xx is stored and replayed like any response.
pub async fn server_errors_stored_when_configured(store: StoreHandle) {
    let app = App::serve(layer(&store).release_server_errors(false)).await;
    let call = || app.post("/flaky").key("flaky-2").auth("alice");
    assert_eq!(
        call().send().await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let again = call().send().await;
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(again.replayed());
    assert_eq!(again.text(), "the database is down");
    assert_eq!(app.runs(), 1);
}

/// Token mode: a token from the issuer's endpoint; the submission with it runs once; the
/// double submission replays; a forged key, a client-chosen one, another principal's token and
/// no key are refused before the handler runs; past the bound per principal the issuer
/// answers 429, other principals unaffected.
pub async fn issued_tokens_flow(store: StoreHandle) {
    const BOUND: u32 = 3;
    let layer = layer(&store)
        .issued_tokens(Duration::from_secs(600))
        .max_live_tokens(BOUND);
    let issuer = layer.token_issuer();
    let app =
        App::serve_router(move |router| router.layer(layer).route_service("/tokens", issuer)).await;
    let token_of = |principal: &'static str| {
        let app = &app;
        async move {
            let reply = app.post("/tokens").auth(principal).send().await;
            assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
            assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
            let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert_eq!(json["expires_in"], 600, "{json}");
            json["token"].as_str().expect("a token").to_owned()
        }
    };

    // Issue, submit, submit again.
    let token = token_of("alice").await;
    assert_eq!(token.len(), 22, "{token}");
    let submit = |key: String, principal: &'static str| {
        let app = &app;
        async move {
            app.post("/orders")
                .key(&key)
                .auth(principal)
                .body("2 books")
                .send()
                .await
        }
    };
    let first = submit(token.clone(), "alice").await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert!(!first.replayed());
    assert_eq!(app.runs(), 1);
    let double = submit(token.clone(), "alice").await;
    assert_eq!(double.status, StatusCode::CREATED);
    assert!(double.replayed(), "the double submission replays");
    assert_eq!(double.body, first.body);
    assert_eq!(app.runs(), 1);

    // Forged, client-chosen, another principal's: refused, the handler never runs.
    let forged = submit("AAAAAAAAAAAAAAAAAAAAAA".to_owned(), "alice").await;
    let detail = forged.assert_problem(400, "unknown-token");
    assert!(detail.contains("new token"), "{detail}");
    submit("order-7".to_owned(), "alice")
        .await
        .assert_problem(400, "unknown-token");
    let bobs = token_of("bob").await;
    submit(bobs.clone(), "alice")
        .await
        .assert_problem(400, "unknown-token");
    submit(token.clone(), "bob")
        .await
        .assert_problem(400, "unknown-token");
    app.post("/orders")
        .auth("alice")
        .body("x")
        .send()
        .await
        .assert_problem(400, "missing-key");
    assert_eq!(app.runs(), 1, "no refused request ran the handler");
    // Bob's own token is still live: the refusals did not consume it.
    let his = submit(bobs, "bob").await;
    assert_eq!(his.status, StatusCode::CREATED);
    assert!(!his.replayed());
    assert_eq!(app.runs(), 2);

    // The bound: alice holds one token (redeemed, its ttl not ended); two more, then 429.
    for _ in 1..BOUND {
        token_of("alice").await;
    }
    let past = app.post("/tokens").auth("alice").send().await;
    let detail = past.assert_problem(429, "too-many-tokens");
    assert!(detail.contains(&BOUND.to_string()), "{detail}");
    token_of("carol").await;
    // A request the principal function names no one for gets no token.
    app.post("/tokens")
        .send()
        .await
        .assert_problem(401, "no-principal");
}
