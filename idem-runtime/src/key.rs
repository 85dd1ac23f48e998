//! Store keys: an injective encoding of (prefix, scope, key parts), readable when short and
//! printable, hashed otherwise.
//!
//! The format, which is part of what is stored:
//!
//! ```text
//! store key  = prefix ":" scope ":" key
//! prefix     = path(prefix)
//! scope      = path(scope)  | "#" hex(sha256(scope))            hashed: long, unprintable or "#…"
//! key        = part *(":" part) | "#" hex(sha256(parts joined))  hashed: long, unprintable, "#…" or hash_keys
//!              (a key of no parts, `key = ()`, is the empty key: the one part "")
//! path(s)    = s with "\" → "\\", "." → "\.", "::" → ".", any other ":" → "\:"
//! part(s)    = s with "\" → "\\", ":" → "\:"
//! ```
//!
//! So `app::charge` with key `order-7` is `idem:app.charge:order-7`, and the tuple key
//! `("a", "b")` is `a:b` while the single key `"a:b"` is `a\:b`. Neither the prefix nor the
//! scope ever holds an unescaped `:`, so the first two unescaped colons split a store key back
//! into its three parts, and each part is decoded by reversing its rule: two different inputs
//! never share a store key (up to SHA-256 collisions). A readable scope or key never starts
//! with `#`: one that would is hashed, so a readable form never equals a hashed one.
//!
//! The HTTP layer (`idem::http`) keys a request by two parts: its principal's tag (see
//! [`principal_tag`]) and the client's key. The scope of a store key can be read back from it
//! ([`stored_scope`], [`scope_name`]), for operators' counts by scope.

use std::cell::RefCell;

use sha2::{Digest, Sha256};

/// Keys longer than this (in bytes, once encoded) are stored as their hash.
pub(crate) const MAX_KEY_BYTES: usize = 200;

/// Scopes longer than this (in bytes) are stored as their hash.
pub(crate) const MAX_SCOPE_BYTES: usize = 200;

/// The store key of the encoded key `key` (see [`Parts`]) in `scope`.
pub(crate) fn store_key(prefix: &str, scope: &str, key: &str, hash_all: bool) -> String {
    let key_len = key.len().min(65);
    let mut out = HEADS
        .try_with(|heads| {
            // Borrowed already only if a key were made while one is being made: not here.
            let mut heads = heads.try_borrow_mut().ok()?;
            Some(heads.start(prefix, scope, key_len))
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let mut out = String::with_capacity(prefix.len() + scope.len() + key_len + 2);
            push_head(&mut out, prefix, scope);
            out
        });
    if hash_all || must_hash(key, MAX_KEY_BYTES) {
        push_hash(&mut out, key);
    } else {
        out.push_str(key);
    }
    out
}

/// The start every store key of `prefix` shares: the encoded prefix and its `:`.
pub(crate) fn key_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    push_path(&mut out, prefix);
    out.push(':');
    out
}

/// Writes `prefix ":" scope ":"`, encoded.
fn push_head(out: &mut String, prefix: &str, scope: &str) {
    push_path(out, prefix);
    out.push(':');
    if must_hash(scope, MAX_SCOPE_BYTES) {
        push_hash(out, scope);
    } else {
        push_path(out, scope);
    }
    out.push(':');
}

/// How many encoded heads (`prefix:scope:`) a thread keeps: a program calls a handful of
/// scopes in its hot loops, and a head encoded once is copied after that.
const KEPT_HEADS: usize = 8;

thread_local! {
    static HEADS: RefCell<HeadCache> = const { RefCell::new(HeadCache { kept: Vec::new(), next: 0 }) };
}

/// The heads of store keys made lately on this thread, by prefix and scope (compared by
/// content, so a head is never used for another prefix or scope).
struct HeadCache {
    kept: Vec<Head>,
    /// Where the next head is kept once all places are taken.
    next: usize,
}

struct Head {
    prefix: Box<str>,
    scope: Box<str>,
    encoded: Box<str>,
}

impl HeadCache {
    /// A store key's start, its head written, with room for `key_len` more bytes.
    fn start(&mut self, prefix: &str, scope: &str, key_len: usize) -> String {
        let found = self
            .kept
            .iter()
            .find(|head| *head.scope == *scope && *head.prefix == *prefix);
        let head = match found {
            Some(head) => head,
            None => {
                let mut encoded = String::with_capacity(prefix.len() + scope.len() + 2);
                push_head(&mut encoded, prefix, scope);
                let head = Head {
                    prefix: prefix.into(),
                    scope: scope.into(),
                    encoded: encoded.into(),
                };
                let at = if self.kept.len() < KEPT_HEADS {
                    self.kept.push(head);
                    self.kept.len() - 1
                } else {
                    let at = self.next;
                    self.next = (at + 1) % KEPT_HEADS;
                    self.kept[at] = head;
                    at
                };
                &self.kept[at]
            }
        };
        let mut out = String::with_capacity(head.encoded.len() + key_len + 1);
        out.push_str(&head.encoded);
        out
    }
}

/// Whether a scope or an encoded key is stored as its hash rather than as itself.
fn must_hash(text: &str, limit: usize) -> bool {
    text.len() > limit || text.starts_with('#') || has_control(text)
}

/// Whether `text` holds a control character ([`char::is_control`]), byte by byte when it is
/// ASCII: every call builds a store key.
fn has_control(text: &str) -> bool {
    if text.is_ascii() {
        text.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        text.chars().any(char::is_control)
    }
}

fn push_hash(out: &mut String, text: &str) {
    out.push('#');
    out.push_str(&hex::encode(Sha256::digest(text.as_bytes())));
}

/// Appends `text` by the path rule: Rust paths stay readable (`a::b` is `a.b`), and no `:`
/// is left unescaped.
fn push_path(out: &mut String, text: &str) {
    // The escaped characters are ASCII, so every index found here is a char boundary, and the
    // text between two of them is copied whole.
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = bytes[from..]
        .iter()
        .position(|b| matches!(b, b':' | b'.' | b'\\'))
    {
        let at = from + found;
        out.push_str(&text[from..at]);
        if bytes[at] == b':' && bytes.get(at + 1) == Some(&b':') {
            out.push('.');
            from = at + 2;
        } else {
            out.push('\\');
            out.push(char::from(bytes[at]));
            from = at + 1;
        }
    }
    out.push_str(&text[from..]);
}

/// Appends one key part by the part rule: `\` and `:` escaped.
fn push_part(out: &mut String, part: &str) {
    for ch in part.chars() {
        if ch == '\\' || ch == ':' {
            out.push('\\');
        }
        out.push(ch);
    }
}

/// The encoded key of a call: its parts, each escaped, joined by `:`. A key of one part (the
/// `key = expr` of the attribute, [`Call::new`](crate::Call::new)) is a tuple of one.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    encoded: String,
    count: usize,
}

impl Parts {
    /// Appends one part.
    pub(crate) fn push(&mut self, part: &str) {
        if self.count > 0 {
            self.encoded.push(':');
        }
        self.count += 1;
        push_part(&mut self.encoded, part);
    }

    /// The encoded key.
    pub(crate) fn finish(self) -> String {
        self.encoded
    }
}

/// The encoded key of a single part, reusing `part`'s allocation when it needs no escape.
pub(crate) fn one_part(part: String) -> String {
    if !part.contains([':', '\\']) {
        return part;
    }
    let mut parts = Parts::default();
    parts.push(&part);
    parts.finish()
}

/// The encoded key of `parts`.
pub(crate) fn of_parts<P: AsRef<str>>(parts: &[P]) -> String {
    let mut encoded = Parts::default();
    for part in parts {
        encoded.push(part.as_ref());
    }
    encoded.finish()
}

/// The namespace of an HTTP principal's keys, the first part of the key of a request the HTTP
/// layer keeps: a hash, so that API keys and user names stay out of the store; `-` when the
/// layer has no principal (a namespace no hash can equal).
pub(crate) fn principal_tag(principal: Option<&str>) -> String {
    match principal {
        None => "-".to_owned(),
        Some(name) => {
            let mut hash = Sha256::new();
            hash.update(b"idem-http-principal\0");
            hash.update(name.as_bytes());
            hex::encode(&hash.finalize()[..16])
        }
    }
}

/// The scope of a store key as it is stored (`billing.invoice`, or `#…` when hashed), from
/// `rest`, the store key past its key prefix: everything up to the first unescaped `:`.
pub(crate) fn stored_scope(rest: &[u8]) -> &[u8] {
    let mut at = 0;
    while at < rest.len() {
        match rest[at] {
            b'\\' => at += 2,
            b':' => return &rest[..at],
            _ => at += 1,
        }
    }
    &rest[..rest.len().min(at)]
}

/// The scope a stored scope was encoded from (`billing.invoice` → `billing::invoice`), by
/// reversing the path rule; `None` for a hashed scope (`#…`), which cannot be reversed.
pub(crate) fn scope_name(stored: &str) -> Option<String> {
    if stored.starts_with('#') {
        return None;
    }
    let mut name = String::with_capacity(stored.len() + 4);
    let mut chars = stored.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => name.extend(chars.next()),
            '.' => name.push_str("::"),
            _ => name.push(ch),
        }
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn single(prefix: &str, scope: &str, key: &str) -> String {
        store_key(prefix, scope, &one_part(key.to_owned()), false)
    }

    #[test]
    fn kept_heads_serve_their_own_prefix_and_scope_only() {
        // More prefixes and scopes than a thread keeps heads for, twice over: each key is
        // the one encoded from scratch.
        for _ in 0..2 {
            for n in 0..(KEPT_HEADS * 2) {
                for (prefix, scope) in [
                    (format!("p{n}"), "a::b".to_owned()),
                    ("p".to_owned(), format!("s{n}::x")),
                    ("p".to_owned(), format!("#s{n}")),
                ] {
                    let mut fresh = String::new();
                    push_head(&mut fresh, &prefix, &scope);
                    fresh.push('k');
                    assert_eq!(store_key(&prefix, &scope, "k", false), fresh);
                }
            }
        }
    }

    #[test]
    fn short_printable_keys_stay_readable() {
        assert_eq!(
            single("idem", "shop::charge", "order-1"),
            "idem:shop.charge:order-1"
        );
        assert_eq!(
            store_key("idem", "s", &of_parts(&["a", "b"]), false),
            "idem:s:a:b"
        );
    }

    #[test]
    fn every_store_key_starts_with_its_key_prefix() {
        for prefix in ["idem", "a:b", r"x.y\z", "p::q"] {
            let stored = single(prefix, "s", "k");
            assert!(stored.starts_with(&key_prefix(prefix)), "{stored}");
            assert_eq!(stored.len(), key_prefix(prefix).len() + "s:k".len());
        }
        assert_eq!(key_prefix("a:b"), r"a\:b:");
    }

    #[test]
    fn the_documented_escapes() {
        assert_eq!(single("p", r"a:b.c\d:::e", "k"), r"p:a\:b\.c\\d.\:e:k");
        assert_eq!(single("p:q", "s", r"x:y\z"), r"p\:q:s:x\:y\\z");
        assert_eq!(
            store_key("p", "s", &of_parts(&["a:b", "", r"\"]), false),
            r"p:s:a\:b::\\"
        );
    }

    #[test]
    fn a_scope_ending_in_a_colon_cannot_reach_a_nested_scope() {
        // The two collisions of the old `prefix:scope:key` format.
        assert_ne!(
            single("idem", "billing", "refund:7"),
            single("idem", "billing:refund", "7")
        );
        assert_ne!(
            single("idem", "app::charge", "refund::7"),
            single("idem", "app::charge::refund", "7")
        );
        assert_ne!(
            single("idem", "s", "a:b"),
            store_key("idem", "s", &of_parts(&["a", "b"]), false)
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
            let stored = store_key("p", "s", &one_part(key.to_owned()), hash_all);
            let hashed = stored.strip_prefix("p:s:#").expect("hashed");
            assert_eq!(hashed.len(), 64);
            assert!(!stored.contains(key));
        }
        assert_ne!(single("p", "s", "a\nb"), single("p", "s", "a\nc"));
        let scope = "s".repeat(MAX_SCOPE_BYTES + 1);
        let stored = single("p", &scope, "k");
        assert!(
            stored.starts_with("p:#") && stored.ends_with(":k"),
            "{stored}"
        );
        assert_eq!(stored.len(), "p:#:k".len() + 64);
    }

    /// The limits are inclusive: a key or scope of exactly the limit stays readable, one byte
    /// more is hashed.
    #[test]
    fn keys_and_scopes_of_the_limit_stay_readable() {
        let key = "k".repeat(MAX_KEY_BYTES);
        assert_eq!(single("p", "s", &key), format!("p:s:{key}"));
        let longer = format!("{key}k");
        assert!(single("p", "s", &longer).starts_with("p:s:#"));
        let scope = "s".repeat(MAX_SCOPE_BYTES);
        assert_eq!(single("p", &scope, "k"), format!("p:{scope}:k"));
        let longer = format!("{scope}s");
        assert!(single("p", &longer, "k").starts_with("p:#"));
    }

    /// The control characters' edges, ASCII and not: below a space and DEL are control
    /// characters; a space, `~` and other printable characters are not.
    #[test]
    fn control_characters_are_told_from_their_neighbours() {
        for printable in [" ", "~", "a b", "é ~", "\u{a0}"] {
            assert!(!has_control(printable), "{printable:?}");
            assert_eq!(single("p", "s", printable), format!("p:s:{printable}"));
        }
        for control in [
            "\0", "\u{1f}", "a\u{7f}", "é\u{1f}", "é\u{7f}", "\u{80}", "\u{9f}",
        ] {
            assert!(has_control(control), "{control:?}");
            assert!(
                single("p", "s", control).starts_with("p:s:#"),
                "{control:?}"
            );
        }
    }

    #[test]
    fn scopes_are_read_back_from_store_keys() {
        for scope in ["billing::invoice", r"a:b.c\d:::e", "s", "", "x::"] {
            let stored = single("p", scope, "k:1");
            let rest = &stored.as_bytes()[key_prefix("p").len()..];
            let segment = std::str::from_utf8(stored_scope(rest)).unwrap();
            assert_eq!(format!("p:{segment}:{}", r"k\:1"), stored);
            assert_eq!(scope_name(segment).as_deref(), Some(scope), "{stored}");
        }
        let long = "s".repeat(MAX_SCOPE_BYTES + 1);
        let stored = single("p", &long, "k");
        let segment = stored_scope(&stored.as_bytes()[2..]);
        assert_eq!(segment.len(), 65);
        assert_eq!(scope_name(std::str::from_utf8(segment).unwrap()), None);
        assert_eq!(stored_scope(br"a\"), br"a\");
        assert_eq!(stored_scope(b"abc"), b"abc", "no colon: all of it");
        assert_eq!(stored_scope(b""), b"");
    }

    #[test]
    fn principals_are_hashed_apart() {
        let alice = principal_tag(Some("sk_live_alice"));
        assert_eq!(alice.len(), 32);
        assert!(!alice.contains("alice"));
        assert_ne!(alice, principal_tag(Some("sk_live_bob")));
        assert_eq!(alice, principal_tag(Some("sk_live_alice")));
        assert_ne!(principal_tag(None), principal_tag(Some("")));
    }

    /// What a call's key is made of: one value, or a tuple of them.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    enum Key {
        One(String),
        Tuple(Vec<String>),
    }

    impl Key {
        /// The parts the key stands for: a single key is a tuple of one, and a tuple of none
        /// is the empty key, by design.
        fn parts(&self) -> Vec<String> {
            match self {
                Key::One(key) => vec![key.clone()],
                Key::Tuple(parts) if parts.is_empty() => vec![String::new()],
                Key::Tuple(parts) => parts.clone(),
            }
        }

        fn encode(&self) -> String {
            match self {
                Key::One(key) => one_part(key.clone()),
                Key::Tuple(parts) => {
                    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                    of_parts(&parts)
                }
            }
        }
    }

    /// Text over the characters the encoding treats specially, short enough that a
    /// non-injective encoding shows collisions within a few cases (the old `prefix:scope:key`
    /// format fails this test at once); now and then other characters or a long text.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[:.a\\\\]{0,4}",
            2 => "[:.a#{}\\\\\n\u{7f}é]{0,8}",
            1 => "[a:.]{190,210}",
            1 => any::<String>(),
        ]
    }

    fn key() -> impl Strategy<Value = Key> {
        prop_oneof![
            text().prop_map(Key::One),
            proptest::collection::vec(text(), 0..5).prop_map(Key::Tuple),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Distinct (prefix, scope, key) never share a store key, with or without `hash_keys`.
        #[test]
        fn distinct_inputs_never_share_a_store_key(
            inputs in proptest::collection::vec((text(), text(), key()), 1..64),
            hash_all in any::<bool>(),
        ) {
            let mut seen: HashMap<String, (String, String, Vec<String>)> = HashMap::new();
            for (prefix, scope, key) in inputs {
                let stored = store_key(&prefix, &scope, &key.encode(), hash_all);
                let input = (prefix, scope, key.parts());
                if let Some(earlier) = seen.get(&stored) {
                    prop_assert_eq!(earlier, &input, "two inputs share {:?}", stored);
                }
                seen.insert(stored, input);
            }
        }

        /// The byte-wise encoders write exactly what the rules above say, char by char.
        #[test]
        fn paths_and_control_checks_follow_their_rules(text in text()) {
            let mut by_rule = String::new();
            let mut chars = text.chars().peekable();
            while let Some(ch) = chars.next() {
                match ch {
                    ':' if chars.next_if_eq(&':').is_some() => by_rule.push('.'),
                    ':' | '.' | '\\' => {
                        by_rule.push('\\');
                        by_rule.push(ch);
                    }
                    _ => by_rule.push(ch),
                }
            }
            let mut written = String::new();
            push_path(&mut written, &text);
            prop_assert_eq!(written, by_rule);
            prop_assert_eq!(has_control(&text), text.chars().any(char::is_control));
        }

        /// Keys stay bounded whatever their input.
        #[test]
        fn store_keys_are_bounded(prefix in "[a-z]{1,16}", scope in text(), key in key()) {
            let stored = store_key(&prefix, &scope, &key.encode(), false);
            prop_assert!(stored.len() <= 2 * 16 + 2 + 2 * MAX_SCOPE_BYTES + MAX_KEY_BYTES + 2);
        }
    }
}
