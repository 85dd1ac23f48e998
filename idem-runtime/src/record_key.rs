//! [`RecordKey`]: how an operator names the record of a call, whatever kind of key made it.

use std::fmt::Display;

use crate::key;

/// The key of one record, as an operator names it for [`inspect`](crate::inspect),
/// [`forget`](crate::forget) and [`Idem::store_key_of`](crate::Idem::store_key_of): the key of
/// a call, made of its parts exactly as the call made it, or a store key as it is stored.
///
/// A call's key is encoded by its shape, so the same text makes different store keys:
/// `key = "a:b"` is one part ([`one`](RecordKey::one)), `key = (tenant, id)` two
/// ([`parts`](RecordKey::parts)), and a request of the HTTP layer is keyed by its principal
/// and the client's key ([`http`](RecordKey::http)). A store key read in a log line or in the
/// store is taken as it is ([`stored`](RecordKey::stored)).
///
/// Any `Display` value converts into the single key it stands for, so
/// `idem::inspect("billing::invoice", "inv-42")` is `inspect` of `RecordKey::one("inv-42")`.
///
/// ```
/// # use idem_runtime as idem;
/// use idem::{Config, Idem, MemoryStore, RecordKey};
///
/// let idem = Idem::with_settings(MemoryStore::new(), &Config::default());
/// let store_key = |key: RecordKey| idem.store_key_of("shop::order", &key);
/// assert_eq!(store_key(RecordKey::one("a:b")), r"idem:shop.order:a\:b");
/// assert_eq!(store_key(RecordKey::parts(["a", "b"])), "idem:shop.order:a:b");
/// assert_eq!(store_key(RecordKey::http(None, "8e03978e")), "idem:shop.order:-:8e03978e");
/// assert_eq!(store_key(RecordKey::stored("idem:x:y")), "idem:x:y");
/// assert_eq!(store_key("order-7".into()), "idem:shop.order:order-7");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey(Form);

/// What a [`RecordKey`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// A call's key, its parts encoded (see `key.rs`): the store key needs the prefix, the
    /// scope and `hash_keys`.
    Call(String),
    /// A store key as it is stored.
    Stored(String),
}

impl RecordKey {
    /// The key of a call keyed by one value: `key = expr` of the attribute, or
    /// [`Call::new`](crate::Call::new).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let idem = idem::Idem::with_settings(idem::MemoryStore::new(), &idem::Config::default());
    /// let key = idem::RecordKey::one(42);
    /// assert_eq!(idem.store_key_of("billing::invoice", &key), "idem:billing.invoice:42");
    /// ```
    pub fn one(key: impl Display) -> RecordKey {
        RecordKey(Form::Call(key::one_part(key.to_string())))
    }

    /// The key of a call keyed by a tuple, its parts in order: `key = (tenant, id)` of the
    /// attribute, or [`Call::with_parts`](crate::Call::with_parts).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idem::Error> {
    /// use idem::RecordKey;
    ///
    /// idem::with_store(idem::MemoryStore::new(), async {
    ///     idem::Call::with_parts("shop::order", ["acme", "o-7"]).run(async { 7_u8 }).await?;
    ///     let key = RecordKey::parts(["acme", "o-7"]);
    ///     assert!(matches!(
    ///         idem::inspect("shop::order", key).await?,
    ///         idem::Inspection::Completed { .. }
    ///     ));
    ///     // The single key "acme:o-7" is another key.
    ///     assert_eq!(idem::inspect("shop::order", "acme:o-7").await?, idem::Inspection::Absent);
    ///     Ok(())
    /// })
    /// .await
    /// # }
    /// ```
    pub fn parts<K: Display>(parts: impl IntoIterator<Item = K>) -> RecordKey {
        let parts: Vec<String> = parts.into_iter().map(|part| part.to_string()).collect();
        RecordKey(Form::Call(key::of_parts(&parts)))
    }

    /// The key of a request the HTTP layer (`idem::http::IdempotencyLayer`) kept: `principal`
    /// is what the layer's `principal` closure returned for it (`None` when the layer has no
    /// principal), `client_key` the request's `Idempotency-Key` (unquoted). The layer's records
    /// are in its scope: `http`, unless the layer sets another with `scope(…)`.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// let idem = idem::Idem::with_settings(idem::MemoryStore::new(), &idem::Config::default());
    /// let anyone = idem::RecordKey::http(None, "8e03978e");
    /// assert_eq!(idem.store_key_of("http", &anyone), "idem:http:-:8e03978e");
    /// // A principal is stored as a hash, never as itself.
    /// let alice = idem.store_key_of("http", &idem::RecordKey::http(Some("sk_alice"), "8e03978e"));
    /// assert!(alice.starts_with("idem:http:") && !alice.contains("alice"));
    /// ```
    pub fn http(principal: Option<&str>, client_key: impl Display) -> RecordKey {
        let parts = [key::principal_tag(principal), client_key.to_string()];
        RecordKey(Form::Call(key::of_parts(&parts)))
    }

    /// A store key as it is stored: from a log line, a span, or the store itself. The scope
    /// given with it is not used to find the record.
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idem::Error> {
    /// idem::with_store(idem::MemoryStore::new(), async {
    ///     idem::Call::new("billing::invoice", "inv-42").run(async { 1_u8 }).await?;
    ///     let logged = idem::RecordKey::stored("idem:billing.invoice:inv-42");
    ///     assert!(idem::forget("billing::invoice", logged).await?);
    ///     Ok(())
    /// })
    /// .await
    /// # }
    /// ```
    pub fn stored(store_key: impl Into<String>) -> RecordKey {
        RecordKey(Form::Stored(store_key.into()))
    }

    /// Whether this is a store key as it is stored ([`stored`](RecordKey::stored)).
    ///
    /// ```
    /// # use idem_runtime as idem;
    /// assert!(idem::RecordKey::stored("idem:s:k").is_stored());
    /// assert!(!idem::RecordKey::one("k").is_stored());
    /// ```
    pub fn is_stored(&self) -> bool {
        matches!(self.0, Form::Stored(_))
    }

    /// The store key of this record in `scope`, under `prefix`, hashed as `hash_keys` says.
    pub(crate) fn store_key(&self, prefix: &str, scope: &str, hash_keys: bool) -> String {
        match &self.0 {
            Form::Call(encoded) => key::store_key(prefix, scope, encoded, hash_keys),
            Form::Stored(stored) => stored.clone(),
        }
    }
}

/// Any `Display` value is the single key it stands for ([`RecordKey::one`]).
impl<T: Display> From<T> for RecordKey {
    fn from(key: T) -> RecordKey {
        RecordKey::one(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_is_encoded_as_calls_encode_it() {
        let of = |key: RecordKey| key.store_key("p", "s::t", false);
        assert_eq!(of(RecordKey::one("a:b")), r"p:s.t:a\:b");
        assert_eq!(of("a:b".into()), r"p:s.t:a\:b");
        assert_eq!(of(RecordKey::parts(["a:b", "c"])), r"p:s.t:a\:b:c");
        assert_eq!(of(RecordKey::parts(Vec::<String>::new())), "p:s.t:");
        let tag = key::principal_tag(Some("alice"));
        assert_eq!(
            of(RecordKey::http(Some("alice"), "k:1")),
            format!(r"p:s.t:{tag}:k\:1")
        );
        assert_eq!(of(RecordKey::http(None, "k")), "p:s.t:-:k");
        assert_eq!(of(RecordKey::stored("raw:key")), "raw:key");
        let hashed = RecordKey::parts(["a", "b"]).store_key("p", "s", true);
        assert!(hashed.starts_with("p:s:#") && hashed.len() == "p:s:#".len() + 64);
    }
}
