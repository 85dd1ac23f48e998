//! The headers the layer reads and writes.

use http::HeaderName;

/// `Idempotency-Key`: the request header that carries the key, unless
/// [`IdempotencyLayer::header`](super::IdempotencyLayer::header) names another.
///
/// ```
/// # use idem_runtime as idem;
/// assert_eq!(idem::http::IDEMPOTENCY_KEY.as_str(), "idempotency-key");
/// ```
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Idempotent-Replayed`: set to `true` on a response that was replayed from the store (the
/// service did not run for this request).
///
/// ```
/// # use idem_runtime as idem;
/// assert_eq!(idem::http::IDEMPOTENT_REPLAYED.as_str(), "idempotent-replayed");
/// ```
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
