//! What a store keeps for a server-issued token: its key, and the answers of issuing and
//! redeeming one (see [`idem::tokens`](crate::tokens) for the flow).
//!
//! A token lives under its own key space, never reachable by a call's key: every token key is
//! `prefix ":#token:{" tag "}"` (its scope's group) followed by `":" token`, where `tag` is 32
//! hex digits of a SHA-256 of the scope. A call's store key has a readable scope (which never
//! starts with `#`) or a hashed one (`#` and 64 hex digits) in that place, so no call key
//! equals a token key, whatever a client sends. The braces make the tag a Redis Cluster hash
//! tag: a scope's group and its tokens share one slot, so a script may touch them together.

use sha2::{Digest, Sha256};

/// The segment of a store key that marks a token: it stands where a call key has its scope.
pub(crate) const TOKEN_SEGMENT: &str = "#token";

/// The value of a token that was issued and not redeemed (Redis keeps it as the string).
pub(crate) const ISSUED: &str = "issued";

/// The value of a redeemed token.
pub(crate) const REDEEMED: &str = "redeemed";

/// Where a store keeps one token: its scope's group key and the token itself.
///
/// Built by [`idem::tokens`](crate::tokens) from the configured prefix, the scope and the
/// token; a store reads [`group`](TokenKey::group), [`token`](TokenKey::token) and
/// [`record`](TokenKey::record) and need not know the format.
///
/// ```
/// # use idem_runtime as idem;
/// let key = idem::store::TokenKey::new("idem", "forms::order", "q3FzZ1Vd0Xw5k2bqv9nHtA");
/// assert!(key.group().starts_with("idem:#token:{"));
/// assert_eq!(key.record(), format!("{}:q3FzZ1Vd0Xw5k2bqv9nHtA", key.group()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKey {
    group: String,
    token: String,
    record: String,
}

impl TokenKey {
    /// The key of `token` in `scope`, under the key prefix `prefix` (the configured one,
    /// `idem` by default).
    pub fn new(prefix: &str, scope: &str, token: &str) -> TokenKey {
        let mut group = crate::key::key_prefix(prefix);
        group.push_str(TOKEN_SEGMENT);
        group.push_str(":{");
        group.push_str(&scope_tag(scope));
        group.push('}');
        let record = format!("{group}:{token}");
        TokenKey {
            group,
            token: token.to_owned(),
            record,
        }
    }

    /// The key of the scope's group: where a store counts the scope's live tokens for a bound
    /// (a Redis sorted set, a PostgreSQL row of its own).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The token as it was issued.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The key of the token's own record: the group key, `:` and the token.
    pub fn record(&self) -> &str {
        &self.record
    }
}

/// 32 hex digits of the SHA-256 of `scope`: injective in practice (128 bits), free of the
/// characters a Redis hash tag or a key format gives meaning to, and no principal's name in
/// the store.
fn scope_tag(scope: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"idem-token-scope\0");
    hash.update(scope.as_bytes());
    hex::encode(&hash.finalize()[..16])
}

/// Whether the store key `key` (with the prefix `prefix`, encoded, and its `:`) is a token's
/// record or group, not a call's record.
pub(crate) fn is_token_key(prefix: &str, key: &[u8]) -> bool {
    key.strip_prefix(prefix.as_bytes())
        .and_then(|rest| rest.strip_prefix(TOKEN_SEGMENT.as_bytes()))
        .is_some_and(|rest| rest.first() == Some(&b':'))
}

/// What [`Store::issue_token`](super::Store::issue_token) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Issue {
    /// The token is stored and can be redeemed once until its ttl ends.
    Issued,
    /// The scope already holds as many live tokens as the bound allows: nothing was stored.
    Full,
}

/// What redeeming a token found: [`Store::redeem_token`](super::Store::redeem_token) and
/// [`idem::tokens::redeem`](crate::tokens::redeem) answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redemption {
    /// The token was live and not redeemed: this redemption consumed it. Exactly one of any
    /// number of concurrent redemptions of a token gets this answer.
    Valid,
    /// No such token in this scope: never issued (forged, or issued to another scope or
    /// principal), or expired.
    Unknown,
    /// The token was redeemed before: a second submission with it (a double click, a resent
    /// request).
    Redeemed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_keys_never_meet_call_keys() {
        let token = TokenKey::new("idem", "s", "abc");
        assert!(is_token_key("idem:", token.record().as_bytes()));
        assert!(is_token_key("idem:", token.group().as_bytes()));
        // A call in a scope named `#token` has its scope hashed: another key.
        let call = crate::key::store_key("idem", "#token", "abc", false);
        assert!(!is_token_key("idem:", call.as_bytes()), "{call}");
        assert_ne!(call, token.record());
        let other = TokenKey::new("idem", "t", "abc");
        assert_ne!(other.group(), token.group());
        assert_eq!(token.group().len(), "idem:#token:{}".len() + 32);
    }
}
