//! The bodies the layer hands on: the request body it read (or the untouched one), and the
//! response body it stored, replays, or streams on.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the wrapped service receives: the original body when the layer does
    /// not apply, or the body the layer read (to fingerprint it) for a keyed request.
    ///
    /// It is an [`http_body::Body`] of [`Bytes`] with the original body's error type, so an
    /// axum `Router` or any handler that takes a body accepts it.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http_body_util::BodyExt;
    /// use idem::http::RequestBody;
    ///
    /// let body = RequestBody::new(http_body_util::Full::new(bytes::Bytes::from("hello")));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    /// # }
    /// ```
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        Streaming { #[pin] body: B },
        Read { data: Option<Bytes>, trailers: Option<HeaderMap> },
    }
}

impl<B> RequestBody<B> {
    /// The request body `body`, handed on as it is.
    pub fn new(body: B) -> Self {
        RequestBody {
            kind: RequestKind::Streaming { body },
        }
    }

    /// A body the layer read into memory.
    pub(crate) fn read(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        RequestBody {
            kind: RequestKind::Read {
                data: Some(data),
                trailers,
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            RequestKindProj::Streaming { body } => body.poll_frame(cx),
            RequestKindProj::Read { data, trailers } => Poll::Ready(next_frame(data, trailers)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Streaming { body } => body.is_end_stream(),
            RequestKind::Read { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Streaming { body } => body.size_hint(),
            RequestKind::Read { data, .. } => exact(data.as_ref()),
        }
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RequestKind::Streaming { .. } => f.write_str("RequestBody::Streaming"),
            RequestKind::Read { data, .. } => f
                .debug_struct("RequestBody::Read")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

pin_project! {
    /// The response body the layer returns: the service's own body (passed through, or
    /// streamed on after the part the layer read), a stored or replayed body, or a problem.
    ///
    /// An [`http_body::Body`] of [`Bytes`] with the service body's error type, so axum turns
    /// it into a response like any other body.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http_body_util::BodyExt;
    /// use idem::http::ResponseBody;
    ///
    /// let body = ResponseBody::new(http_body_util::Full::new(bytes::Bytes::from("done")));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "done");
    /// # }
    /// ```
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B: Body> {
        Service { #[pin] body: B },
        Read { data: Option<Bytes>, trailers: Option<HeaderMap> },
        // The layer read `prefix` and stopped at its limit; the rest streams on.
        Continued { prefix: Option<Bytes>, rest: Pin<Box<B>> },
        // The service's body failed after `prefix`: the client sees the same failure.
        Failed { prefix: Option<Bytes>, error: Option<B::Error> },
    }
}

impl<B: Body> ResponseBody<B> {
    /// The service's response body `body`, handed on as it is.
    pub fn new(body: B) -> Self {
        ResponseBody {
            kind: ResponseKind::Service { body },
        }
    }

    /// A body held in memory: a stored, replayed or problem body.
    pub(crate) fn read(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ResponseBody {
            kind: ResponseKind::Read {
                data: Some(data),
                trailers,
            },
        }
    }

    /// `prefix`, then what is left of `rest`.
    pub(crate) fn continued(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        ResponseBody {
            kind: ResponseKind::Continued {
                prefix: Some(prefix),
                rest,
            },
        }
    }

    /// `prefix`, then `error`.
    pub(crate) fn failed(prefix: Bytes, error: B::Error) -> Self {
        ResponseBody {
            kind: ResponseKind::Failed {
                prefix: Some(prefix),
                error: Some(error),
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Service { body } => body.poll_frame(cx),
            ResponseKindProj::Read { data, trailers } => Poll::Ready(next_frame(data, trailers)),
            ResponseKindProj::Continued { prefix, rest } => {
                match prefix.take().filter(|p| !p.is_empty()) {
                    Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                    None => rest.as_mut().poll_frame(cx),
                }
            }
            ResponseKindProj::Failed { prefix, error } => {
                match prefix.take().filter(|p| !p.is_empty()) {
                    Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                    None => Poll::Ready(error.take().map(Err)),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Service { body } => body.is_end_stream(),
            ResponseKind::Read { data, trailers } => data.is_none() && trailers.is_none(),
            ResponseKind::Continued { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            ResponseKind::Failed { prefix, error } => prefix.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Service { body } => body.size_hint(),
            ResponseKind::Read { data, .. } => exact(data.as_ref()),
            ResponseKind::Continued { prefix, rest } => {
                let read = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
            ResponseKind::Failed { .. } => SizeHint::default(),
        }
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.kind {
            ResponseKind::Service { .. } => "ResponseBody::Service",
            ResponseKind::Read { .. } => "ResponseBody::Read",
            ResponseKind::Continued { .. } => "ResponseBody::Continued",
            ResponseKind::Failed { .. } => "ResponseBody::Failed",
        })
    }
}

/// The next frame of a body held in memory: its data (unless empty), then its trailers.
fn next_frame<E>(
    data: &mut Option<Bytes>,
    trailers: &mut Option<HeaderMap>,
) -> Option<Result<Frame<Bytes>, E>> {
    if let Some(data) = data.take().filter(|d| !d.is_empty()) {
        return Some(Ok(Frame::data(data)));
    }
    trailers.take().map(|t| Ok(Frame::trailers(t)))
}

fn exact(data: Option<&Bytes>) -> SizeHint {
    SizeHint::with_exact(data.map_or(0, |d| d.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A body that ends at once, with `String` errors.
    struct Ended;

    impl Body for Ended {
        type Data = Bytes;
        type Error = String;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
            Poll::Ready(None)
        }
    }

    #[tokio::test]
    async fn a_continued_body_is_the_read_part_then_the_rest() {
        let rest = Box::pin(Full::new(Bytes::from(" world")));
        let body = ResponseBody::continued(Bytes::from("hello"), rest);
        assert_eq!(body.size_hint().exact(), Some(11));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
    }

    #[tokio::test]
    async fn a_failed_body_is_the_read_part_then_the_error() {
        let mut body = ResponseBody::<Ended>::failed(Bytes::from("part"), "broken".to_owned());
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, "part");
        assert_eq!(body.frame().await.unwrap().unwrap_err(), "broken");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_read_request_body_keeps_its_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", http::HeaderValue::from_static("abc"));
        let body = RequestBody::<Ended>::read(Bytes::from("data"), Some(trailers));
        assert_eq!(body.size_hint().exact(), Some(4));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["checksum"], "abc");
        assert_eq!(collected.to_bytes(), "data");
    }
}
