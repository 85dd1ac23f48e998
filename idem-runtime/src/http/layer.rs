//! [`IdempotencyLayer`]: the settings of the layer, set by a builder.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method};
use tower::Layer;

use super::service::Idempotency;
use super::settings::LayerSettings;
use super::tokens::TokenIssuer;
use crate::store::StoreHandle;

/// A [`tower::Layer`] that makes an HTTP service idempotent per `Idempotency-Key` header; the
/// [module documentation](super) gives the rules.
///
/// Build it with [`new`](IdempotencyLayer::new) and the builder methods, then hand it to
/// `axum::Router::layer`, `route_layer`, a `MethodRouter`, or `tower::ServiceBuilder`. Options
/// left unset take the defaults of the [`Config`](crate::Config) given to
/// [`init`](crate::init) (ttl, lease, wait, store, fail mode, key prefix).
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// use axum::{Router, routing::post};
/// use http::{Request, StatusCode};
/// use http_body_util::BodyExt;
/// use idem::http::IdempotencyLayer;
/// use tower::ServiceExt;
///
/// let runs = Arc::new(AtomicUsize::new(0));
/// let counter = runs.clone();
/// let app = Router::new()
///     .route("/orders", post(move |body: String| async move {
///         let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
///         (StatusCode::CREATED, format!("order {n}: {body}"))
///     }))
///     .layer(IdempotencyLayer::new().store(idem::MemoryStore::new()));
///
/// let order = || {
///     Request::post("/orders")
///         .header("idempotency-key", "8e03978e-40d5-43e8")
///         .body(axum::body::Body::from("2 books"))
///         .unwrap()
/// };
/// let first = app.clone().oneshot(order()).await.unwrap();
/// assert_eq!(first.status(), StatusCode::CREATED);
/// assert!(first.headers().get("idempotent-replayed").is_none());
///
/// // The client retries (a timeout, a dropped connection): the stored response comes back.
/// let retry = app.oneshot(order()).await.unwrap();
/// assert_eq!(retry.status(), StatusCode::CREATED);
/// assert_eq!(retry.headers()["idempotent-replayed"], "true");
/// let body = retry.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, "order 1: 2 books");
/// assert_eq!(runs.load(Ordering::SeqCst), 1);
/// # }
/// ```
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct IdempotencyLayer {
    pub(crate) settings: LayerSettings,
}

impl Default for IdempotencyLayer {
    fn default() -> Self {
        IdempotencyLayer::new()
    }
}

impl IdempotencyLayer {
    /// A layer with the defaults: header `Idempotency-Key`, optional, methods `POST` and
    /// `PATCH`, 1 MiB body limits, `5xx` released, `Content-Type` and `Location` replayed, no
    /// principal (one namespace for every client: set [`principal`](Self::principal) for an
    /// API with more than one client), and the ttl, lease, wait and store of the configuration.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        IdempotencyLayer {
            settings: LayerSettings::default(),
        }
    }

    /// The request header that carries the key (default `Idempotency-Key`).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use http::HeaderName;
    ///
    /// let layer = idem::http::IdempotencyLayer::new()
    ///     .header(HeaderName::from_static("x-request-id"));
    /// # let _ = layer;
    /// ```
    pub fn header(mut self, name: HeaderName) -> Self {
        self.settings.header = name;
        self
    }

    /// Whether a request of a covered method must carry a key: a request without one is
    /// answered `400` and the service is not called. Default `false`: such requests pass
    /// through unprotected.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new().required(true);
    /// # let _ = layer;
    /// ```
    pub fn required(mut self, required: bool) -> Self {
        self.settings.required = required;
        self
    }

    /// The namespace of this layer's keys in the store (default `http`). Two layers share keys
    /// only when they share a scope and a principal; within one scope, the same key on another
    /// route is another request (`422`).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new().scope("billing-api");
    /// # let _ = layer;
    /// ```
    pub fn scope(mut self, scope: impl Into<Cow<'static, str>>) -> Self {
        self.settings.scope = scope.into();
        self
    }

    /// How long a stored response is replayed (default: the configured `ttl`, 24h).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use std::time::Duration;
    ///
    /// let layer = idem::http::IdempotencyLayer::new().ttl(Duration::from_secs(3600));
    /// # let _ = layer;
    /// ```
    ///
    /// # Panics
    ///
    /// When `ttl` is shorter than 1ms, as tower's builders panic on a setting no request could
    /// work with: the layer would otherwise answer `500` to every keyed request. The minimum is
    /// the one `Config` and `Call` refuse with `Error::Config`, and `#[idempotent]` at compile
    /// time.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        if let Err(error) = crate::config::check_ttl(ttl) {
            panic!("IdempotencyLayer::ttl: {error}");
        }
        self.settings.ttl = Some(ttl);
        self
    }

    /// How long the claim of a running request lives without renewal (default: the configured
    /// `lease`, 30s). It is renewed every `lease / 3` while the service runs, so this bounds
    /// only how long a crashed process blocks its keys.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use std::time::Duration;
    ///
    /// let layer = idem::http::IdempotencyLayer::new().lease(Duration::from_secs(10));
    /// # let _ = layer;
    /// ```
    ///
    /// # Panics
    ///
    /// When `lease` is shorter than 3ms (it is renewed every `lease / 3`), as tower's builders
    /// panic on a setting no request could work with. The minimum is the one `Config` and
    /// `Call` refuse with `Error::Config`, and `#[idempotent]` at compile time.
    pub fn lease(mut self, lease: Duration) -> Self {
        if let Err(error) = crate::config::check_lease(lease) {
            panic!("IdempotencyLayer::lease: {error}");
        }
        self.settings.lease = Some(lease);
        self
    }

    /// How long a request waits for a running request with the same key before it is answered
    /// `409` (default: the configured `wait`, 10s). When the running request completes within
    /// that time, its response is replayed.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use std::time::Duration;
    ///
    /// let layer = idem::http::IdempotencyLayer::new().wait(Duration::from_secs(2));
    /// # let _ = layer;
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.settings.wait = Some(wait);
        self
    }

    /// Answers `409` at once to a request whose key is in flight, instead of waiting for it:
    /// the same as `wait(Duration::ZERO)`.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new().reject_in_flight();
    /// # let _ = layer;
    /// ```
    pub fn reject_in_flight(self) -> Self {
        self.wait(Duration::ZERO)
    }

    /// The methods the layer applies to (default `POST` and `PATCH`); requests with other
    /// methods pass through untouched, key or not.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use http::Method;
    ///
    /// let layer = idem::http::IdempotencyLayer::new()
    ///     .methods([Method::POST, Method::PUT, Method::PATCH, Method::DELETE]);
    /// # let _ = layer;
    /// ```
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.methods = methods.into_iter().collect();
        self
    }

    /// The largest request body (in bytes) of a keyed request (default 1 MiB). The body is read
    /// into memory to be fingerprinted, so a larger one (by its `Content-Length`, or while
    /// it streams) is answered `413` and the service is not called.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new().max_request_body(64 * 1024);
    /// # let _ = layer;
    /// ```
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.settings.max_request_body = bytes;
        self
    }

    /// The largest response body (in bytes) the layer stores (default 1 MiB). A larger response
    /// is returned to the client in full (streamed on from where the layer stopped reading) but
    /// not stored: the key is released, a warning is logged, and a retry runs the service
    /// again. Keep idempotent responses small (a created resource's id and `Location`).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new().max_response_body(256 * 1024);
    /// # let _ = layer;
    /// ```
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.settings.max_response_body = bytes;
        self
    }

    /// Request headers that are part of the request's identity, beside the method, the path
    /// and query, and the body (default: none): the same key sent with another value of one of
    /// them is `422`.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use http::HeaderName;
    ///
    /// let layer = idem::http::IdempotencyLayer::new()
    ///     .fingerprint_headers([http::header::CONTENT_TYPE, HeaderName::from_static("x-account")]);
    /// # let _ = layer;
    /// ```
    pub fn fingerprint_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.settings.fingerprint_headers = names.into_iter().collect();
        self
    }

    /// Response headers that are stored and replayed with the status and body (default
    /// `Content-Type` and `Location`); this list replaces the default. Other headers (dates,
    /// request ids, cookies) are sent with the first response only.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use http::header;
    ///
    /// let layer = idem::http::IdempotencyLayer::new()
    ///     .replay_headers([header::CONTENT_TYPE, header::LOCATION, header::ETAG]);
    /// # let _ = layer;
    /// ```
    pub fn replay_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.settings.replay_headers = names.into_iter().collect();
        self
    }

    /// Whether a `5xx` response releases the key so that a retry runs the service again
    /// (default `true`). With `false`, `5xx` responses are stored and replayed like the others.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new().release_server_errors(false);
    /// # let _ = layer;
    /// ```
    pub fn release_server_errors(mut self, release: bool) -> Self {
        self.settings.release_server_errors = release;
        self
    }

    /// Names the client of each request: the authenticated user, the API key, the tenant.
    /// Keys are scoped by it, so two clients sending the same key get their own responses and
    /// never each other's. The name is hashed (SHA-256) before it reaches the store.
    ///
    /// A request for which it returns `None` (not authenticated) passes through untouched:
    /// nothing is stored or replayed for it, and the service's own authentication answers it.
    /// Without a principal, all clients share one namespace: fine for a single client or an
    /// internal service, wrong for a public API.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new().principal(|request| {
    ///     let token = request.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    ///     token.strip_prefix("Bearer ").map(str::to_owned)
    /// });
    /// # let _ = layer;
    /// ```
    pub fn principal<F>(mut self, principal: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.settings.principal = Some(Arc::new(principal));
        self
    }

    /// **Token mode**: keys must be tokens this layer issued (see [`token_issuer`](Self::token_issuer)),
    /// each live for `ttl` from its issue, to the request's [principal](Self::principal) only.
    /// A request's key is redeemed before its service runs: a live token runs the service
    /// once; the same token again (a double submission, a resent request) replays the first
    /// response, or waits for it, as a client-chosen key would; a key that is not a live
    /// token of this principal (forged, expired, another principal's) is answered `400` with
    /// the code `unknown-token`, and the service does not run. A request without a key is
    /// `400` `missing-key` (the mode implies [`required`](Self::required)).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use std::time::Duration;
    ///
    /// let layer = idem::http::IdempotencyLayer::new()
    ///     .issued_tokens(Duration::from_secs(600))
    ///     .max_live_tokens(20);
    /// let issuer = layer.token_issuer(); // a route of its own: route_service("/tokens", issuer)
    /// # let _ = (layer, issuer);
    /// ```
    ///
    /// # Panics
    ///
    /// When `ttl` is shorter than 1ms, as [`ttl`](Self::ttl) does.
    pub fn issued_tokens(mut self, ttl: Duration) -> Self {
        if let Err(error) = crate::config::check_ttl(ttl) {
            panic!("IdempotencyLayer::issued_tokens: {error}");
        }
        self.settings.token_ttl = Some(ttl);
        self.settings.required = true;
        self
    }

    /// In token mode, at most `max` tokens a principal was issued whose ttl has not ended,
    /// redeemed or not (a rate limit: `max` per token ttl); past it the issuer answers `429`
    /// with the code `too-many-tokens` (or [`IssueError::TooMany`](super::IssueError::TooMany)).
    /// Exact under concurrent requests. Default: no bound.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use std::time::Duration;
    ///
    /// let layer = idem::http::IdempotencyLayer::new()
    ///     .issued_tokens(Duration::from_secs(600))
    ///     .max_live_tokens(20);
    /// # let _ = layer;
    /// ```
    pub fn max_live_tokens(mut self, max: u32) -> Self {
        self.settings.max_live_tokens = Some(max);
        self
    }

    /// The issuer of this layer's tokens, sharing its settings as they are now (build the
    /// layer first): a handler helper ([`TokenIssuer::issue`]) and an endpoint (a tower
    /// `Service`, for `axum::Router::route_service`). Put the endpoint outside the layer's
    /// methods or routes, or on a method the layer does not cover (`GET`).
    pub fn token_issuer(&self) -> TokenIssuer {
        TokenIssuer::new(Arc::new(self.settings.clone()))
    }

    /// Runs on `store` instead of the configured one.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let layer = idem::http::IdempotencyLayer::new().store(idem::MemoryStore::new());
    /// # let _ = layer;
    /// ```
    pub fn store(mut self, store: impl Into<StoreHandle>) -> Self {
        self.settings.store = Some(store.into());
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, Arc::new(self.settings.clone()))
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.settings.fmt(f)
    }
}
