//! What the layer reads from a request: the key, the principal, the body, the fingerprint.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderName, header};
use http_body::Body;
use http_body_util::BodyExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::replay::Blob;

/// The longest key the draft allows a server to require support for, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 255;

/// Why a key header is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadKey {
    Repeated,
    Empty,
    TooLong,
    Unprintable,
}

/// How a header is named in a problem's detail: as the draft spells it, for the default.
pub(crate) fn label(header: &HeaderName) -> &str {
    if *header == super::headers::IDEMPOTENCY_KEY {
        "Idempotency-Key"
    } else {
        header.as_str()
    }
}

impl BadKey {
    pub(crate) fn detail(self, header: &HeaderName) -> String {
        let header = label(header);
        match self {
            BadKey::Repeated => format!("the {header} header was sent more than once"),
            BadKey::Empty => format!("the {header} header is empty"),
            BadKey::TooLong => {
                format!("the {header} header is longer than {MAX_KEY_BYTES} bytes")
            }
            BadKey::Unprintable => format!(
                "the {header} header must be printable ASCII (a string such as a UUID, quoted or not)"
            ),
        }
    }
}

/// The key of a request: `None` without the header. The draft makes the key a Structured
/// Field string (`"…"`), and most clients send it bare: both are accepted.
pub(crate) fn idempotency_key(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Result<Option<String>, BadKey> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadKey::Repeated);
    }
    let raw = value.as_bytes();
    let key = match raw {
        [b'"', inner @ .., b'"'] => unquote(inner)?,
        _ => {
            check_printable(raw)?;
            raw.to_vec()
        }
    };
    if key.is_empty() {
        return Err(BadKey::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(BadKey::TooLong);
    }
    // Printable ASCII throughout, so this is UTF-8.
    String::from_utf8(key)
        .map(Some)
        .map_err(|_| BadKey::Unprintable)
}

fn check_printable(bytes: &[u8]) -> Result<(), BadKey> {
    if bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        Ok(())
    } else {
        Err(BadKey::Unprintable)
    }
}

/// The content of an sf-string: `\"` and `\\` are the only escapes, a bare `"` ends it.
fn unquote(inner: &[u8]) -> Result<Vec<u8>, BadKey> {
    check_printable(inner)?;
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(e),
                _ => return Err(BadKey::Unprintable),
            },
            b'"' => return Err(BadKey::Unprintable),
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// The `Content-Length` of a message, when it declares one.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A body read up to a limit.
pub(crate) enum Read<B: Body> {
    /// The whole body: its data and its trailers.
    Whole(Bytes, Option<HeaderMap>),
    /// More than the limit: what was read (past the limit by at most one frame), and the rest.
    Over(Bytes, Pin<Box<B>>),
    /// The body failed after what was read.
    Failed(Bytes, B::Error),
}

/// Reads `body` into memory, stopping once it is longer than `limit` bytes.
pub(crate) async fn read_body<B: Body<Data = Bytes>>(body: B, limit: usize) -> Read<B> {
    let mut body = Box::pin(body);
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    let collected = |first: Option<Bytes>, more: BytesMut| match first {
        None => Bytes::new(),
        Some(first) if more.is_empty() => first,
        Some(first) => {
            let mut all = BytesMut::with_capacity(first.len() + more.len());
            all.extend_from_slice(&first);
            all.extend_from_slice(&more);
            all.freeze()
        }
    };
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Read::Failed(collected(first, more), error),
        };
        match frame.into_data() {
            Ok(data) => {
                // One chunk, the usual case, is kept without a copy.
                match &first {
                    None => first = Some(data),
                    Some(_) => more.extend_from_slice(&data),
                }
                let len = first.as_ref().map_or(0, Bytes::len) + more.len();
                if len > limit {
                    return Read::Over(collected(first, more), body);
                }
            }
            Err(frame) => {
                if let Ok(frame_trailers) = frame.into_trailers() {
                    trailers
                        .get_or_insert_with(HeaderMap::new)
                        .extend(frame_trailers);
                }
            }
        }
    }
    Read::Whole(collected(first, more), trailers)
}

/// What makes two requests with one key the same request.
#[derive(Serialize)]
pub(crate) struct RequestPrint<'a> {
    method: &'a str,
    target: &'a str,
    body: String,
    headers: Vec<(&'a str, Blob<'a>)>,
}

impl<'a> RequestPrint<'a> {
    pub(crate) fn of(parts: &'a Parts, body: &[u8], named: &'a [HeaderName]) -> Self {
        let headers = named
            .iter()
            .flat_map(|name| {
                parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(move |value| (name.as_str(), Blob::of(value.as_bytes())))
            })
            .collect();
        RequestPrint {
            method: parts.method.as_str(),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path(), |pq| pq.as_str()),
            body: hex::encode(Sha256::digest(body)),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key_of(values: &[&[u8]]) -> Result<Option<String>, BadKey> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                super::super::headers::IDEMPOTENCY_KEY,
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        idempotency_key(&headers, &super::super::headers::IDEMPOTENCY_KEY)
    }

    #[test]
    fn keys_bare_or_quoted() {
        assert_eq!(key_of(&[]), Ok(None));
        assert_eq!(key_of(&[b"abc-1"]), Ok(Some("abc-1".into())));
        assert_eq!(key_of(&[b"\"abc-1\""]), Ok(Some("abc-1".into())));
        assert_eq!(key_of(&[br#""a\"b\\c""#]), Ok(Some(r#"a"b\c"#.into())));
        assert_eq!(key_of(&[b"a b"]), Ok(Some("a b".into())));
        let longest = "k".repeat(MAX_KEY_BYTES);
        assert_eq!(key_of(&[longest.as_bytes()]), Ok(Some(longest.clone())));
    }

    #[test]
    fn bad_keys() {
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        for (value, why) in [
            (&b"\"\""[..], BadKey::Empty),
            (long.as_bytes(), BadKey::TooLong),
            (b"a\tb", BadKey::Unprintable),
            (b"caf\xc3\xa9", BadKey::Unprintable),
            (b"\"a\"b\"", BadKey::Unprintable),
            (br#""a\nb""#, BadKey::Unprintable),
        ] {
            assert_eq!(key_of(&[value]), Err(why), "{value:?}");
        }
        assert_eq!(key_of(&[b"a", b"a"]), Err(BadKey::Repeated));
    }

    #[tokio::test]
    async fn reads_bodies_up_to_the_limit() {
        use http_body_util::Full;
        match read_body(Full::new(Bytes::from("hello")), 5).await {
            Read::Whole(data, None) => assert_eq!(data, "hello"),
            _ => panic!("a body at the limit is read whole"),
        }
        match read_body(Full::new(Bytes::from("hello!")), 5).await {
            Read::Over(prefix, _) => assert_eq!(prefix, "hello!"),
            _ => panic!("a body over the limit is not read whole"),
        }
    }
}
