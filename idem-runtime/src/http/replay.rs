//! [`Replay`]: a response as it is stored and replayed.
//!
//! Stored inside the engine's JSON envelope as
//! `{"status":201,"headers":[["content-type","application/json"]],"body":"{\"id\":7}"}`: a
//! body or header value is a JSON string when it is UTF-8, else `{"base64":"…"}`.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Body;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::body::ResponseBody;
use super::headers::IDEMPOTENT_REPLAYED;

/// A stored response: the status, the headers the layer replays, and the body.
#[derive(Debug)]
pub(crate) struct Replay {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The service's own response head, kept (not stored) for the response of the request
    /// that ran: it carries every header, not only the replayed ones.
    first: Option<Parts>,
}

impl Replay {
    /// The stored form of the service's response `parts` and `body`.
    pub(crate) fn new(parts: Parts, body: Bytes, replayed: &[HeaderName]) -> Self {
        let mut headers = HeaderMap::new();
        for name in replayed {
            for value in parts.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Replay {
            status: parts.status,
            headers,
            body,
            first: Some(parts),
        }
    }

    /// The response for the client: the service's own for the request that ran, the stored one
    /// marked `Idempotent-Replayed: true` for a replay.
    pub(crate) fn into_response<B: Body>(self) -> Response<ResponseBody<B>> {
        let body = ResponseBody::read(self.body, None);
        match self.first {
            Some(parts) => Response::from_parts(parts, body),
            None => {
                let mut response = Response::new(body);
                *response.status_mut() = self.status;
                *response.headers_mut() = self.headers;
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                response
            }
        }
    }
}

/// Bytes in JSON: a string when they are UTF-8, `{"base64": …}` otherwise.
pub(crate) enum Blob<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> Blob<'a> {
    pub(crate) fn of(bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Blob::Text(text),
            Err(_) => Blob::Binary(bytes),
        }
    }
}

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Binary {
            base64: String,
        }
        match self {
            Blob::Text(text) => serializer.serialize_str(text),
            Blob::Binary(bytes) => Binary {
                base64: BASE64.encode(bytes),
            }
            .serialize(serializer),
        }
    }
}

/// The owned form of [`Blob`], as read back.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredBlob<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Binary { base64: Cow<'a, str> },
}

impl StoredBlob<'_> {
    fn into_bytes<E: serde::de::Error>(self) -> Result<Bytes, E> {
        match self {
            StoredBlob::Text(text) => Ok(Bytes::from(text.into_owned().into_bytes())),
            StoredBlob::Binary { base64 } => BASE64
                .decode(base64.as_bytes())
                .map(Bytes::from)
                .map_err(|e| E::custom(format!("invalid base64: {e}"))),
        }
    }
}

#[derive(Serialize)]
struct WireOut<'a> {
    status: u16,
    headers: Vec<(&'a str, Blob<'a>)>,
    body: Blob<'a>,
}

#[derive(Deserialize)]
struct WireIn<'a> {
    status: u16,
    #[serde(borrow)]
    headers: Vec<(Cow<'a, str>, StoredBlob<'a>)>,
    #[serde(borrow)]
    body: StoredBlob<'a>,
}

impl Serialize for Replay {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireOut {
            status: self.status.as_u16(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), Blob::of(value.as_bytes())))
                .collect(),
            body: Blob::of(&self.body),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Replay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireIn::deserialize(deserializer)?;
        let status = StatusCode::from_u16(wire.status)
            .map_err(|_| D::Error::custom(format!("invalid status {}", wire.status)))?;
        let mut headers = HeaderMap::new();
        for (name, value) in wire.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| D::Error::custom(format!("invalid header name `{name}`")))?;
            let value = HeaderValue::from_maybe_shared(value.into_bytes::<D::Error>()?)
                .map_err(|_| D::Error::custom(format!("invalid value of header `{name}`")))?;
            headers.append(name, value);
        }
        Ok(Replay {
            status,
            headers,
            body: wire.body.into_bytes()?,
            first: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn stored(status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Replay {
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        let (parts, ()) = response.body(()).unwrap().into_parts();
        Replay::new(
            parts,
            Bytes::copy_from_slice(body),
            &[header::CONTENT_TYPE, header::LOCATION],
        )
    }

    #[test]
    fn text_is_stored_as_text_and_replayed() {
        let replay = stored(
            201,
            &[
                ("content-type", b"application/json"),
                ("location", b"/orders/7"),
                ("x-request-id", b"r-1"),
            ],
            br#"{"id":7}"#,
        );
        let json = serde_json::to_string(&replay).unwrap();
        assert_eq!(
            json,
            r#"{"status":201,"headers":[["content-type","application/json"],["location","/orders/7"]],"body":"{\"id\":7}"}"#
        );
        let back: Replay = serde_json::from_str(&json).unwrap();
        let response = back.into_response::<http_body_util::Empty<Bytes>>();
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()[header::LOCATION], "/orders/7");
        assert_eq!(response.headers()[IDEMPOTENT_REPLAYED], "true");
        assert!(response.headers().get("x-request-id").is_none());
    }

    #[test]
    fn binary_is_stored_as_base64() {
        let body = [0xff, 0x00, 0xfe, 0x10];
        let replay = stored(200, &[("content-type", b"caf\xe9")], &body);
        let json = serde_json::to_string(&replay).unwrap();
        assert!(json.contains(r#""body":{"base64":"/wD+EA=="}"#), "{json}");
        let back: Replay = serde_json::from_str(&json).unwrap();
        assert_eq!(back.body.as_ref(), &body);
        assert_eq!(back.headers[header::CONTENT_TYPE].as_bytes(), b"caf\xe9");
    }

    #[test]
    fn corrupt_records_are_errors() {
        for json in [
            r#"{"status":99,"headers":[],"body":""}"#,
            r#"{"status":200,"headers":[["bad name","x"]],"body":""}"#,
            r#"{"status":200,"headers":[],"body":{"base64":"***"}}"#,
            r#"{"status":200,"headers":[],"body":[1,2]}"#,
        ] {
            assert!(serde_json::from_str::<Replay>(json).is_err(), "{json}");
        }
    }
}
