//! [`TokenIssuer`]: issues the tokens a layer in token mode
//! ([`IdempotencyLayer::issued_tokens`](super::IdempotencyLayer::issued_tokens)) accepts, to a
//! handler ([`TokenIssuer::issue`]) or as an endpoint of its own (it is a tower `Service`).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use tower::Service;

use super::problem::Problem;
use super::settings::LayerSettings;
use crate::error::Error;

/// Issues the tokens of one [`IdempotencyLayer`](super::IdempotencyLayer) in token mode, each
/// to the principal of the request that asks, for the layer's token ttl, within its bound per
/// principal. Made by [`IdempotencyLayer::token_issuer`](super::IdempotencyLayer::token_issuer);
/// cloning it is cheap.
///
/// As a handler helper, [`issue`](TokenIssuer::issue) returns the token (to put in a form's
/// hidden field). As an endpoint (`axum::Router::route_service("/tokens", issuer)`), it
/// answers any request with `201 Created` and `{"token": "…", "expires_in": <seconds>}`
/// (`Cache-Control: no-store`), or a `problem+json`: `429` `too-many-tokens` past the bound,
/// `401` `no-principal` for a request the layer's principal function names no one for, `503`
/// `store-unavailable`.
///
/// ```
/// # use idem_runtime as idem;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
///
/// use axum::{Router, routing::post};
/// use http::{Request, StatusCode};
/// use http_body_util::BodyExt;
/// use idem::http::IdempotencyLayer;
/// use tower::ServiceExt;
///
/// let layer = IdempotencyLayer::new()
///     .store(idem::MemoryStore::new())
///     .issued_tokens(Duration::from_secs(600))
///     .max_live_tokens(20);
/// let issuer = layer.token_issuer();
/// let app = Router::new()
///     .route("/orders", post(|| async { (StatusCode::CREATED, "order 1") }))
///     .layer(layer)
///     .route_service("/tokens", issuer.clone());
///
/// // A handler that renders a form would call `issuer.issue(&parts)`; a client asks the endpoint.
/// let asked = app.clone().oneshot(Request::post("/tokens").body(axum::body::Body::empty()).unwrap());
/// let answer = asked.await.unwrap();
/// assert_eq!(answer.status(), StatusCode::CREATED);
/// let body = answer.into_body().collect().await.unwrap().to_bytes();
/// let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// let token = json["token"].as_str().unwrap().to_owned();
///
/// let submit = |key: String| {
///     Request::post("/orders").header("idempotency-key", key).body(axum::body::Body::empty()).unwrap()
/// };
/// let first = app.clone().oneshot(submit(token.clone())).await.unwrap();
/// assert_eq!(first.status(), StatusCode::CREATED);
/// let double = app.clone().oneshot(submit(token)).await.unwrap();
/// assert_eq!(double.headers()["idempotent-replayed"], "true");
/// let forged = app.oneshot(submit("not-a-token".to_owned())).await.unwrap();
/// assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
/// # }
/// ```
#[derive(Clone)]
pub struct TokenIssuer {
    settings: Arc<LayerSettings>,
}

/// Why [`TokenIssuer::issue`] issued no token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The layer names principals, and names none for this request: tokens are issued to
    /// a principal.
    #[error("the request has no principal, and tokens are issued to a principal only")]
    NoPrincipal,
    /// The principal already holds as many live tokens as the layer allows.
    #[error("the principal already holds {max_live} live tokens, the most the layer allows")]
    TooMany {
        /// The layer's bound.
        max_live: u32,
    },
    /// The layer is not in token mode: it has no token ttl.
    #[error("the layer does not take server-issued tokens; call IdempotencyLayer::issued_tokens")]
    NotTokenMode,
    /// The store failed, or another failure of idem's ([`Error::Store`], [`Error::Config`]).
    #[error(transparent)]
    Idem(#[from] Error),
}

/// The body of the endpoint's answer.
#[derive(Serialize)]
struct Issued<'a> {
    token: &'a str,
    expires_in: u64,
}

impl TokenIssuer {
    pub(crate) fn new(settings: Arc<LayerSettings>) -> Self {
        TokenIssuer { settings }
    }

    /// How long an issued token lives: the layer's [`issued_tokens`](super::IdempotencyLayer::issued_tokens) ttl, `None` outside token mode.
    pub fn token_ttl(&self) -> Option<Duration> {
        self.settings.token_ttl
    }

    /// Issues a token to the principal of `request` (the layer's principal function; one
    /// namespace for all when it has none), live for the layer's token ttl.
    ///
    /// Fails with [`IssueError::TooMany`] past the layer's bound, [`IssueError::NoPrincipal`]
    /// for a request without a principal, [`IssueError::Idem`] when the store fails.
    pub async fn issue(&self, request: &Parts) -> Result<String, IssueError> {
        let settings = &self.settings;
        let ttl = settings.token_ttl.ok_or(IssueError::NotTokenMode)?;
        let principal = settings
            .principal_of(request)
            .ok_or(IssueError::NoPrincipal)?;
        let (store, prefix) = crate::tokens::resolve(settings.store.as_ref())?;
        let scope = settings.token_scope(&principal);
        let max_live = settings.max_live_tokens;
        match crate::tokens::issue_on(&store, &prefix, &scope, ttl, max_live).await {
            Err(Error::TooManyTokens { max_live, .. }) => Err(IssueError::TooMany { max_live }),
            issued => Ok(issued?),
        }
    }

    /// The endpoint's answer to `request`.
    async fn respond(self, request: Parts) -> Response<Full<Bytes>> {
        let problem = match self.issue(&request).await {
            Ok(token) => {
                let expires_in = self.token_ttl().unwrap_or_default().as_secs();
                let body = serde_json::to_vec(&Issued {
                    token: &token,
                    expires_in,
                })
                .unwrap_or_default();
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = StatusCode::CREATED;
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return response;
            }
            Err(IssueError::TooMany { max_live }) => Problem::TooManyTokens(max_live),
            Err(IssueError::NoPrincipal) => Problem::NoPrincipal,
            Err(IssueError::Idem(Error::Store { .. })) => Problem::StoreUnavailable,
            Err(error) => {
                tracing::error!(%error, "idem: the token issuer failed");
                Problem::Internal
            }
        };
        problem.into_full_response()
    }
}

impl<B> Service<Request<B>> for TokenIssuer {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, _) = request.into_parts();
        let issuer = self.clone();
        Box::pin(async move { Ok(issuer.respond(parts).await) })
    }
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("layer", &self.settings)
            .finish()
    }
}
