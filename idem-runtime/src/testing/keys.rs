//! The store keys calls write under, for tests that look at a store's records directly.

/// The store key of a call of `scope` with `key` under `prefix`, encoded as every call encodes
/// it: for tests that look at a store's records directly.
pub fn store_key(prefix: &str, scope: &str, key: &str) -> String {
    crate::key::store_key(prefix, scope, &crate::key::one_part(key.to_owned()), false)
}
