//! The `Idempotency-Key` HTTP layer: any tower HTTP service (an axum `Router`, a route, a
//! hyper service) made idempotent per request key, with the same engine and stores as
//! `#[idempotent]`. Needs the `http` feature (tower and http; axum is not a dependency).
//!
//! It follows the IETF draft `draft-ietf-httpapi-idempotency-key-header`:
//!
//! | the request | the answer |
//! |---|---|
//! | a method the layer does not cover (default: all but `POST` and `PATCH`) | passed through untouched |
//! | no key, layer [optional](IdempotencyLayer::required) (the default) | passed through untouched |
//! | no key, layer [required](IdempotencyLayer::required) | `400`, the service is not called |
//! | a key longer than 255 bytes, empty, not printable ASCII, or sent twice | `400` |
//! | a request body over [`max_request_body`](IdempotencyLayer::max_request_body) | `413`, the service is not called |
//! | the first request with a key | the service runs; its response is stored (see below) and returned |
//! | the same key while that request runs | waits, then replays its response; or `409` after the [wait](IdempotencyLayer::wait), at once with [`reject_in_flight`](IdempotencyLayer::reject_in_flight); the `409` has a `Retry-After` of the seconds until the running request's lease ends |
//! | the same key again, the same request | the stored status, [named headers](IdempotencyLayer::replay_headers) and body, with `Idempotent-Replayed: true` |
//! | the same key with another request (method, path and query, body, [named headers](IdempotencyLayer::fingerprint_headers)) | `422` |
//! | the store unavailable | `503` (fail closed); with `Config::fail_mode(FailMode::Open)` the service runs unprotected |
//! | [token mode](IdempotencyLayer::issued_tokens): a key that is not a live token issued to this principal | `400` `unknown-token`, the service is not called |
//! | token mode: a token issued to this principal, first or again | as any key: the service runs once, the same token again replays |
//!
//! **What is stored.** `2xx`, `3xx` and `4xx` responses are stored and replayed, except `408`
//! and `429` (they say "try again later", so replaying them would be wrong). `5xx` responses
//! release the key, so a retry runs the service again
//! ([configurable](IdempotencyLayer::release_server_errors)). A response whose body is larger
//! than [`max_response_body`](IdempotencyLayer::max_response_body), or that has trailers, is
//! returned to the client in full but not stored: the key is released, a warning is logged, and
//! a retry runs the service again. The stored body is text when it is UTF-8, base64 otherwise.
//!
//! **Who may replay.** Keys are scoped by the [principal](IdempotencyLayer::principal) the
//! application names for each request (the authenticated user, the API key, the tenant), so a
//! client can never receive another client's response by reusing or guessing its key.
//! Principals are hashed before they reach the store's key space.
//!
//! **Errors** are `application/problem+json` bodies (RFC 9457) with `type`, `title`, `status`,
//! `detail` and a stable `code`: `missing-key`, `invalid-key`, `body-too-large`,
//! `body-unreadable`, `in-progress`, `key-mismatch`, `store-unavailable`, `unknown-token`,
//! `too-many-tokens` and `no-principal` (the last two from the [`TokenIssuer`]), `internal`.
//!
//! **Server-issued tokens.** In [token mode](IdempotencyLayer::issued_tokens) the server
//! hands out the keys: the client asks the [`TokenIssuer`] (an endpoint, or a handler that
//! puts the token in a form), submits with it, and a double submission replays the first's
//! response. See [`idem::tokens`](crate::tokens) for what a token is.
//!
//! ```
//! # use idem_runtime as idem;
//! use std::time::Duration;
//!
//! use axum::{Router, routing::post};
//! use idem::http::IdempotencyLayer;
//!
//! async fn create_order(body: String) -> (http::StatusCode, String) {
//!     (http::StatusCode::CREATED, format!("order for {body}"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/orders", post(create_order))
//!     .layer(
//!         IdempotencyLayer::new()
//!             .required(true)
//!             .ttl(Duration::from_secs(24 * 3600))
//!             .principal(|request| {
//!                 request
//!                     .headers
//!                     .get(http::header::AUTHORIZATION)?
//!                     .to_str()
//!                     .ok()
//!                     .map(str::to_owned)
//!             }),
//!     );
//! # let _ = app;
//! ```

mod body;
mod headers;
mod layer;
mod problem;
mod replay;
mod request;
mod service;
mod settings;
mod tokens;

pub use body::{RequestBody, ResponseBody};
pub use headers::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use layer::IdempotencyLayer;
pub use service::{Idempotency, ResponseFuture};
pub use tokens::{IssueError, TokenIssuer};
