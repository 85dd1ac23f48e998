//! Store keys: `prefix:scope:key`, with long, unprintable or private keys hashed.

use sha2::{Digest, Sha256};

/// Keys longer than this (in bytes) are stored as their hash.
pub(crate) const MAX_KEY_BYTES: usize = 200;

/// The store key of `key` in `scope`.
///
/// The key is kept readable when it is short and printable; otherwise (or with `hash_all`)
/// it is replaced by `#` and the SHA-256 of the key in hex, so that keys stay bounded and no
/// personal data needs to appear in the store's key space. A key that itself starts with `#`
/// is hashed too, so that a readable key can never collide with a hashed one.
pub(crate) fn store_key(prefix: &str, scope: &str, key: &str, hash_all: bool) -> String {
    let hash = hash_all
        || key.len() > MAX_KEY_BYTES
        || key.starts_with('#')
        || key.chars().any(char::is_control);
    let mut out = String::with_capacity(prefix.len() + scope.len() + key.len().min(65) + 2);
    out.push_str(prefix);
    out.push(':');
    out.push_str(scope);
    out.push(':');
    if hash {
        out.push('#');
        out.push_str(&hex::encode(Sha256::digest(key.as_bytes())));
    } else {
        out.push_str(key);
    }
    out
}

/// A short, non-reversible form of a store key for logs and spans.
pub(crate) fn log_form(store_key: &str) -> String {
    hex::encode(&Sha256::digest(store_key.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_printable_keys_stay_readable() {
        assert_eq!(
            store_key("idem", "shop::charge", "order-1", false),
            "idem:shop::charge:order-1"
        );
    }

    #[test]
    fn long_unprintable_and_private_keys_are_hashed() {
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        for (key, hash_all) in [
            (long.as_str(), false),
            ("a\nb", false),
            ("#x", false),
            ("alice@example.com", true),
        ] {
            let stored = store_key("p", "s", key, hash_all);
            let hashed = stored.strip_prefix("p:s:#").expect("hashed");
            assert_eq!(hashed.len(), 64);
            assert!(!stored.contains(key));
        }
        assert_ne!(
            store_key("p", "s", "a\nb", false),
            store_key("p", "s", "a\nc", false)
        );
    }
}
