//! [`Idempotency`]: the service the layer wraps around another, and the path of one request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::problem::Problem;
use super::replay::Replay;
use super::request::{self, Read, RequestPrint};
use super::settings::LayerSettings;
use crate::call::Call;
use crate::engine::Frame;
use crate::error::Error;
use crate::outcome::Outcome;
use crate::store::{Inspection, Redemption, StoreHandle};

/// The future of an [`Idempotency`] service: the wrapped service's response, a replayed one,
/// or a problem.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

/// An HTTP service made idempotent per `Idempotency-Key`: what [`IdempotencyLayer`] makes of
/// the service it wraps.
///
/// The wrapped service receives a [`RequestBody`] (the body the layer read, or the untouched
/// one) and its response body is handed on in a [`ResponseBody`]; an axum `Router`, route or
/// handler accepts both. Its errors pass through, and release the key.
///
/// ```
/// # use idem_runtime as idem;
/// use axum::{Router, routing::post};
/// use idem::http::{Idempotency, IdempotencyLayer};
/// use tower::Layer;
///
/// let router: Router = Router::new().route("/orders", post(|| async { "created" }));
/// let service: Idempotency<Router> = IdempotencyLayer::new().layer(router);
/// # let _ = service;
/// ```
///
/// [`IdempotencyLayer`]: super::IdempotencyLayer
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    settings: Arc<LayerSettings>,
}

impl<S> Idempotency<S> {
    pub(crate) fn new(inner: S, settings: Arc<LayerSettings>) -> Self {
        Idempotency { inner, settings }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// use idem::http::IdempotencyLayer;
    /// use tower::{Layer, service_fn};
    ///
    /// let inner = service_fn(|_: http::Request<String>| async { Ok::<_, std::convert::Infallible>(()) });
    /// let service = IdempotencyLayer::new().layer(inner);
    /// let _inner = service.into_inner();
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("layer", &self.settings)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: fmt::Display + Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready handles this request; the clone waits for the next.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(respond(self.settings.clone(), ready, request))
    }
}

/// The path of one request through the layer.
async fn respond<S, ReqBody, ResBody>(
    settings: Arc<LayerSettings>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: fmt::Display,
    ResBody: Body<Data = Bytes>,
{
    if !settings.methods.contains(request.method()) {
        return pass(inner, request).await;
    }
    let key = match request::idempotency_key(request.headers(), &settings.header) {
        Ok(Some(key)) => key,
        Ok(None) if settings.required => {
            return Ok(
                Problem::MissingKey(request::label(&settings.header).to_owned()).into_response(),
            );
        }
        Ok(None) => return pass(inner, request).await,
        Err(bad) => return Ok(Problem::InvalidKey(bad.detail(&settings.header)).into_response()),
    };
    let (parts, body) = request.into_parts();
    let principal = match &settings.principal {
        None => crate::key::principal_tag(None),
        Some(principal_of) => match principal_of(&parts) {
            Some(principal) => crate::key::principal_tag(Some(&principal)),
            // Not authenticated: the service's own authentication answers.
            None => return pass(inner, Request::from_parts(parts, body)).await,
        },
    };

    let limit = settings.max_request_body;
    if request::declared_length(&parts.headers).is_some_and(|n| n > limit as u64) {
        return Ok(Problem::BodyTooLarge(limit).into_response());
    }
    let (data, trailers) = match request::read_body(body, limit).await {
        Read::Whole(data, trailers) => (data, trailers),
        Read::Over(..) => return Ok(Problem::BodyTooLarge(limit).into_response()),
        Read::Failed(_, error) => {
            tracing::debug!(%error, "idem: the body of a keyed request could not be read");
            return Ok(Problem::BodyUnreadable.into_response());
        }
    };

    if settings.token_ttl.is_some()
        && let Some(refused) = redeem(&settings, &principal, &key).await
    {
        return Ok(refused.into_response());
    }

    let print = RequestPrint::of(&parts, &data, &settings.fingerprint_headers);
    let mut call = Call::with_parts(settings.scope.clone(), [principal.as_str(), key.as_str()])
        .fingerprint(&print);
    if let Some(ttl) = settings.ttl {
        call = call.ttl(ttl);
    }
    if let Some(lease) = settings.lease {
        call = call.lease(lease);
    }
    if let Some(wait) = settings.wait {
        call = call.wait(wait);
    }
    if let Some(store) = &settings.store {
        call = call.store(store.clone());
    }
    let request = Request::from_parts(parts, RequestBody::read(data, trailers));
    let (ran, rejected) = call
        .run_result_framed(
            async {
                let response = inner.call(request).await.map_err(Unstored::Error)?;
                keep(&settings, response).await
            },
            // A rejected call keeps the store it asked and its lease, for `Retry-After`.
            |ran, frame| {
                let rejected = match (&ran, frame) {
                    (Err(Error::InProgress { .. }), Some(frame)) => Rejected::of(frame),
                    _ => None,
                };
                (ran, rejected)
            },
        )
        .await;
    match ran {
        Ok(Outcome {
            value: Ok(replay), ..
        }) => Ok(replay.into_response()),
        Ok(Outcome {
            value: Err(Unstored::Response(response)),
            ..
        }) => Ok(*response),
        Ok(Outcome {
            value: Err(Unstored::Error(error)),
            ..
        }) => Err(error),
        Err(Error::InProgress { key }) => {
            let seconds = match rejected {
                Some(rejected) => rejected.retry_after(&key).await,
                // Not a rejection of a call that asked its store (never seen).
                None => 1,
            };
            Ok(Problem::InProgress(seconds).into_response())
        }
        Err(error) => Ok(problem_of(&error).into_response()),
    }
}

/// In token mode, redeems `key` as a token issued to `principal`: `None` for a live token or
/// one redeemed before (the request goes on, and replays when it is a duplicate), the problem
/// to answer otherwise. Tokens fail closed whatever the fail mode: an unchecked token is
/// never taken for a valid one.
async fn redeem(settings: &LayerSettings, principal: &str, key: &str) -> Option<Problem> {
    let redeemed = async {
        let (store, prefix) = crate::tokens::resolve(settings.store.as_ref())?;
        let keep = crate::tokens::keep(settings.ttl, settings.lease);
        let scope = settings.token_scope(principal);
        crate::tokens::redeem_on(&store, &prefix, &scope, key, keep).await
    };
    match redeemed.await {
        Ok(Redemption::Unknown) => Some(Problem::UnknownToken),
        Ok(_) => None,
        Err(error) => Some(problem_of(&error)),
    }
}

/// What the call of a rejected request resolved: the store it asked and its lease.
struct Rejected {
    store: StoreHandle,
    lease: Duration,
}

impl Rejected {
    /// The store and lease of `frame`; `None` for a replay from the local cache.
    fn of(frame: &Frame<'_>) -> Option<Rejected> {
        Some(Rejected {
            store: frame.store()?.clone(),
            lease: frame.lease,
        })
    }

    /// The whole seconds, at least one, until the lease of the request holding `key` (a store
    /// key) ends: asked of the store on this rejection only, else the call's lease.
    async fn retry_after(&self, key: &str) -> u64 {
        let left = match self.store.inspect(key).await {
            Ok(Inspection::InProgress {
                lease_left: Some(left),
                ..
            }) => left,
            // Finished meanwhile: retry at once.
            Ok(Inspection::Absent | Inspection::Completed { .. }) => Duration::ZERO,
            Ok(_) => self.lease,
            Err(error) => {
                tracing::debug!(%error, "idem: the store cannot tell the lease left; Retry-After is the lease");
                self.lease
            }
        };
        whole_seconds(left)
    }
}

/// `duration` in whole seconds, rounded up, at least one.
fn whole_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.max(1)
}

/// Hands a request the layer does not apply to on, untouched.
async fn pass<S, ReqBody, ResBody>(
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let response = inner.call(request.map(RequestBody::new)).await?;
    Ok(response.map(ResponseBody::new))
}

/// A service result that is not stored: the key is released and a retry runs again.
enum Unstored<E, B: Body> {
    /// A response to hand on as it is (a `5xx`, or one too large to store); boxed, as the
    /// result is moved through the engine.
    Response(Box<Response<ResponseBody<B>>>),
    /// The service failed.
    Error(E),
}

/// Reads a response to store it, or hands it on unstored.
async fn keep<E, B>(
    settings: &LayerSettings,
    response: Response<B>,
) -> Result<Replay, Unstored<E, B>>
where
    B: Body<Data = Bytes>,
{
    if !settings.stores(response.status()) {
        return Err(Unstored::Response(Box::new(
            response.map(ResponseBody::new),
        )));
    }
    let (parts, body) = response.into_parts();
    let limit = settings.max_response_body;
    let too_large = || {
        tracing::warn!(
            status = parts.status.as_u16(),
            limit,
            "idem: the response body is larger than max_response_body; it is returned but not \
             stored, so a retry runs the service again"
        );
    };
    if request::declared_length(&parts.headers).is_some_and(|n| n > limit as u64) {
        too_large();
        return Err(Unstored::Response(Box::new(Response::from_parts(
            parts,
            ResponseBody::new(body),
        ))));
    }
    let body = match request::read_body(body, limit).await {
        Read::Whole(data, None) => return Ok(Replay::new(parts, data, &settings.replay_headers)),
        Read::Whole(data, Some(trailers)) => {
            tracing::warn!(
                "idem: the response has trailers, which cannot be replayed; it is returned but \
                 not stored, so a retry runs the service again"
            );
            ResponseBody::read(data, Some(trailers))
        }
        Read::Over(prefix, rest) => {
            too_large();
            ResponseBody::continued(prefix, rest)
        }
        Read::Failed(prefix, error) => ResponseBody::failed(prefix, error),
    };
    Err(Unstored::Response(Box::new(Response::from_parts(
        parts, body,
    ))))
}

fn problem_of(error: &Error) -> Problem {
    match error {
        Error::InProgress { .. } => Problem::InProgress(1),
        Error::KeyMismatch { .. } => Problem::KeyMismatch,
        Error::Store { .. } => Problem::StoreUnavailable,
        _ => {
            tracing::error!(%error, "idem: a keyed request failed in the idempotency layer");
            Problem::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1_001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(30)), 30);
    }
}
