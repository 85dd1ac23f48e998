//! The layer's own answers: `application/problem+json` bodies (RFC 9457).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Body;
use http_body_util::Full;
use serde::Serialize;

use super::body::ResponseBody;

/// A request the layer answers itself, without a stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// The layer requires a key and the request has none.
    MissingKey(String),
    /// The key header is not a valid key.
    InvalidKey(String),
    /// The request body is larger than the layer reads.
    BodyTooLarge(usize),
    /// The request body could not be read.
    BodyUnreadable,
    /// A request with this key is running; its lease ends within this many seconds (the
    /// `Retry-After`).
    InProgress(u64),
    /// The key was used with another request.
    KeyMismatch,
    /// The store failed and the configuration is fail-closed.
    StoreUnavailable,
    /// The layer takes server-issued tokens only, and this key is not a live one of the
    /// principal's.
    UnknownToken,
    /// The principal holds as many live tokens as the layer allows.
    TooManyTokens(u32),
    /// A token was asked for without a principal.
    NoPrincipal,
    /// Something the client cannot fix (a corrupt record, an invalid configuration).
    Internal,
}

#[derive(Serialize)]
struct ProblemJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'static str,
}

impl Problem {
    fn status(&self) -> StatusCode {
        match self {
            Problem::MissingKey(_) | Problem::InvalidKey(_) | Problem::BodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Problem::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::InProgress(_) => StatusCode::CONFLICT,
            Problem::KeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Problem::UnknownToken => StatusCode::BAD_REQUEST,
            Problem::TooManyTokens(_) => StatusCode::TOO_MANY_REQUESTS,
            Problem::NoPrincipal => StatusCode::UNAUTHORIZED,
            Problem::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable name of the problem, for clients that branch on more than the status.
    fn code(&self) -> &'static str {
        match self {
            Problem::MissingKey(_) => "missing-key",
            Problem::InvalidKey(_) => "invalid-key",
            Problem::BodyTooLarge(_) => "body-too-large",
            Problem::BodyUnreadable => "body-unreadable",
            Problem::InProgress(_) => "in-progress",
            Problem::KeyMismatch => "key-mismatch",
            Problem::StoreUnavailable => "store-unavailable",
            Problem::UnknownToken => "unknown-token",
            Problem::TooManyTokens(_) => "too-many-tokens",
            Problem::NoPrincipal => "no-principal",
            Problem::Internal => "internal",
        }
    }

    fn detail(&self) -> String {
        match self {
            Problem::MissingKey(header) => {
                format!("this request requires an {header} header; send a unique key, such as a UUID, and send the same key again when you retry")
            }
            Problem::InvalidKey(why) => why.clone(),
            Problem::BodyTooLarge(limit) => format!(
                "a request with an idempotency key may have a body of at most {limit} bytes"
            ),
            Problem::BodyUnreadable => "the request body could not be read".to_owned(),
            Problem::InProgress(_) => "a request with this idempotency key is still being processed; retry later".to_owned(),
            Problem::KeyMismatch => "this idempotency key was already used with a different request (method, path, body or headers); use a new key for a new request".to_owned(),
            Problem::StoreUnavailable => "the idempotency store is unavailable, so the request was not processed; retry later".to_owned(),
            Problem::UnknownToken => "this idempotency key is not a token this server issued to you, or it expired; ask for a new token and submit with it".to_owned(),
            Problem::TooManyTokens(max) => format!("you already hold {max} live tokens, the most this server issues; use one, or retry once one expires"),
            Problem::NoPrincipal => "tokens are issued to authenticated clients only".to_owned(),
            Problem::Internal => "the request could not be processed".to_owned(),
        }
    }

    /// The status, `application/problem+json` body and headers of the answer. `type` is
    /// `about:blank`: the status and the `code` extension member say what happened.
    fn parts(&self) -> (StatusCode, Bytes, HeaderMap) {
        let status = self.status();
        let detail = self.detail();
        let json = serde_json::to_vec(&ProblemJson {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: &detail,
            code: self.code(),
        })
        .unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Problem::InProgress(seconds) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
        }
        (status, Bytes::from(json), headers)
    }

    /// The answer, as the layer's service answers.
    pub(crate) fn into_response<B: Body>(self) -> Response<ResponseBody<B>> {
        let (status, json, headers) = self.parts();
        let mut response = Response::new(ResponseBody::read(json, None));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// The answer with a body of its own, as the token issuer answers.
    pub(crate) fn into_full_response(self) -> Response<Full<Bytes>> {
        let (status, json, headers) = self.parts();
        let mut response = Response::new(Full::new(json));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_bodies_follow_rfc_9457() {
        let response = Problem::KeyMismatch.into_response::<http_body_util::Empty<Bytes>>();
        assert_eq!(response.status(), 422);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["title"], "Unprocessable Entity");
        assert_eq!(json["status"], 422);
        assert_eq!(json["code"], "key-mismatch");
        assert!(
            json["detail"]
                .as_str()
                .unwrap()
                .contains("different request")
        );
    }

    #[test]
    fn in_progress_says_when_to_retry() {
        let response = Problem::InProgress(7).into_response::<http_body_util::Empty<Bytes>>();
        assert_eq!(response.status(), 409);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let other = Problem::KeyMismatch.into_response::<http_body_util::Empty<Bytes>>();
        assert!(other.headers().get(header::RETRY_AFTER).is_none());
    }
}
