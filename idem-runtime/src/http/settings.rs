//! What an [`IdempotencyLayer`](super::IdempotencyLayer) is set to: built by the layer, read by
//! the service, so that neither needs the other.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode, header};

use super::headers::IDEMPOTENCY_KEY;
use crate::store::StoreHandle;

/// The default of [`IdempotencyLayer::max_request_body`] and
/// [`IdempotencyLayer::max_response_body`]: 1 MiB.
const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Names the client of a request: keys of different principals never meet.
pub(crate) type Principal = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// What [`IdempotencyLayer`]'s builder sets; shared by every clone of the service.
#[derive(Clone)]
pub(crate) struct LayerSettings {
    pub(crate) header: HeaderName,
    pub(crate) required: bool,
    pub(crate) scope: Cow<'static, str>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) wait: Option<Duration>,
    pub(crate) methods: Vec<Method>,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) replay_headers: Vec<HeaderName>,
    pub(crate) release_server_errors: bool,
    pub(crate) principal: Option<Principal>,
    pub(crate) store: Option<StoreHandle>,
    /// Keys must be tokens the layer issued, each live this long, when set.
    pub(crate) token_ttl: Option<Duration>,
    /// How many live tokens a principal may be issued.
    pub(crate) max_live_tokens: Option<u32>,
}

impl LayerSettings {
    /// The principal's tag of a request (see `key.rs`): `None` when the layer names
    /// principals and this request has none.
    pub(crate) fn principal_of(&self, parts: &Parts) -> Option<String> {
        match &self.principal {
            None => Some(crate::key::principal_tag(None)),
            Some(principal_of) => {
                principal_of(parts).map(|name| crate::key::principal_tag(Some(&name)))
            }
        }
    }

    /// The token scope of a principal's tokens: the layer's scope and the principal's tag, as
    /// the two parts of a key (an injective encoding).
    pub(crate) fn token_scope(&self, principal: &str) -> String {
        crate::key::of_parts(&[self.scope.as_ref(), principal])
    }

    /// Whether a response with `status` is stored and replayed (otherwise the key is released).
    pub(crate) fn stores(&self, status: StatusCode) -> bool {
        if status.is_server_error() {
            return !self.release_server_errors;
        }
        !(status.is_informational()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS)
    }
}

impl Default for LayerSettings {
    /// The defaults that [`IdempotencyLayer::new`](super::IdempotencyLayer::new) documents.
    fn default() -> Self {
        LayerSettings {
            header: IDEMPOTENCY_KEY,
            required: false,
            scope: Cow::Borrowed("http"),
            ttl: None,
            lease: None,
            wait: None,
            methods: vec![Method::POST, Method::PATCH],
            max_request_body: DEFAULT_MAX_BODY,
            max_response_body: DEFAULT_MAX_BODY,
            fingerprint_headers: Vec::new(),
            replay_headers: vec![header::CONTENT_TYPE, header::LOCATION],
            release_server_errors: true,
            principal: None,
            store: None,
            token_ttl: None,
            max_live_tokens: None,
        }
    }
}

impl fmt::Debug for LayerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("header", &self.header)
            .field("required", &self.required)
            .field("scope", &self.scope)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("wait", &self.wait)
            .field("methods", &self.methods)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("replay_headers", &self.replay_headers)
            .field("release_server_errors", &self.release_server_errors)
            .field("principal", &self.principal.as_ref().map(|_| "Fn(&Parts)"))
            .field("store", &self.store)
            .field("token_ttl", &self.token_ttl)
            .field("max_live_tokens", &self.max_live_tokens)
            .finish()
    }
}
