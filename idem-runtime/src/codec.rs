//! The stored payload: a versioned envelope around the serialized result.
//!
//! The envelope is JSON, so that `redis-cli GET` shows what was stored:
//! `{"v":1,"codec":"json","fp":"<sha-256 hex>"|null,"ok":<value>}` (or `"err":` for a
//! cached error). A result that could not be stored so that it reads back as its type leaves
//! `"unstorable":{"type":"<Rust type>","reason":"<why>"}` in place of the value, so that later
//! calls learn why instead of running the body again.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::record::Fingerprint;

/// The envelope format written by this version.
const VERSION: u32 = 1;
const CODEC: &str = "json";

/// How every envelope written by this version begins (see [`seal`]).
const HEAD: &str = r#"{"v":1,"codec":"json","fp":"#;

/// Which side of a `Result` a record holds, or that it holds no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordSide {
    Ok,
    Err,
    /// The first call's result could not be stored; the value is a JSON object with the
    /// `type` and the `reason`.
    Unstorable,
}

/// A decoded envelope; the value is still its JSON text.
pub(crate) struct Envelope<'a> {
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) side: RecordSide,
    pub(crate) value: &'a str,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    v: u32,
    codec: &'a str,
    fp: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "present")]
    ok: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    err: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unstorable: Option<&'a RawValue>,
}

/// What an unstorable record says.
#[derive(Serialize, Deserialize)]
pub(crate) struct Unstorable {
    /// The Rust type of the result that could not be stored.
    #[serde(rename = "type")]
    pub(crate) type_name: String,
    /// Why it could not.
    pub(crate) reason: String,
}

/// A field that is present is `Some`, even when its value is `null` (a stored `()` or
/// `None`); only a missing field is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Reads an envelope; the error says why the bytes are not one.
pub(crate) fn open(bytes: &[u8]) -> Result<Envelope<'_>, String> {
    let wire: RawEnvelope<'_> =
        serde_json::from_slice(bytes).map_err(|e| format!("not an idem envelope: {e}"))?;
    if wire.v != VERSION {
        return Err(format!(
            "envelope version {} is not supported (this idem reads version {VERSION})",
            wire.v
        ));
    }
    if wire.codec != CODEC {
        return Err(format!("codec `{}` is not supported", wire.codec));
    }
    let fingerprint = match wire.fp {
        None => None,
        Some(hex) => Some(
            Fingerprint::from_hex(hex)
                .ok_or_else(|| format!("fingerprint `{hex}` is not valid"))?,
        ),
    };
    let (side, value) = match (wire.ok, wire.err, wire.unstorable) {
        (Some(value), None, None) => (RecordSide::Ok, value),
        (None, Some(value), None) => (RecordSide::Err, value),
        (None, None, Some(value)) => (RecordSide::Unstorable, value),
        _ => {
            return Err(
                "the envelope must hold exactly one of `ok`, `err` and `unstorable`".to_owned(),
            );
        }
    };
    Ok(Envelope {
        fingerprint,
        side,
        value: value.get(),
    })
}

/// Reads an envelope laid out exactly as [`seal`] writes it, without parsing its frame as
/// JSON: the replay path of every call, where a full parse would cost more than the rest of
/// the call. `None` for anything else, which [`open`] then reads (or explains).
///
/// The value is not checked here: it is the text between the side's field and the closing
/// brace, and decoding it fails unless it is exactly one JSON value, so a caller that fails
/// to decode it must let [`open`] decide.
pub(crate) fn open_written(text: &str) -> Option<Envelope<'_>> {
    let rest = text.strip_prefix(HEAD)?;
    let (fingerprint, rest) = match rest.strip_prefix("null") {
        Some(rest) => (None, rest),
        None => {
            let (hex, rest) = rest.strip_prefix('"')?.split_at_checked(64)?;
            (Some(Fingerprint::from_hex(hex)?), rest.strip_prefix('"')?)
        }
    };
    let (side, rest) = match rest.strip_prefix(r#","ok":"#) {
        Some(rest) => (RecordSide::Ok, rest),
        None => (RecordSide::Err, rest.strip_prefix(r#","err":"#)?),
    };
    Some(Envelope {
        fingerprint,
        side,
        value: rest.strip_suffix('}')?,
    })
}

/// The fingerprint in the head of an envelope as [`seal`] writes it, without reading the
/// rest; `None` when it has none or `bytes` is laid out otherwise.
pub(crate) fn fingerprint_of(bytes: &[u8]) -> Option<Fingerprint> {
    let rest = bytes.strip_prefix(HEAD.as_bytes())?.strip_prefix(b"\"")?;
    let hex = std::str::from_utf8(rest.get(..64)?).ok()?;
    if rest.get(64) != Some(&b'"') {
        return None;
    }
    Fingerprint::from_hex(hex)
}

/// Writes an envelope around `value`, and checks that the value reads back as `V`: a value
/// that serde_json writes but cannot read (a NaN float becomes `null`, a map with keys that
/// are not strings fails) must never be stored as a result.
pub(crate) fn seal<V: Serialize + DeserializeOwned>(
    fingerprint: Option<&Fingerprint>,
    side: RecordSide,
    value: &V,
) -> Result<Vec<u8>, String> {
    let mut out = head(fingerprint, side);
    let start = out.len();
    serde_json::to_writer(&mut out, value).map_err(|e| format!("it cannot be serialized: {e}"))?;
    if let Err(e) = serde_json::from_slice::<V>(&out[start..]) {
        return Err(format!(
            "it serializes as `{}`, which does not read back as the type: {e}",
            String::from_utf8_lossy(&out[start..])
        ));
    }
    out.push(b'}');
    Ok(out)
}

/// Writes the envelope of a result that could not be stored: later calls with its key get
/// [`Error::Unstorable`](crate::Error::Unstorable) with the type and the reason.
pub(crate) fn seal_unstorable(
    fingerprint: Option<&Fingerprint>,
    type_name: &str,
    reason: &str,
) -> Vec<u8> {
    let mut out = head(fingerprint, RecordSide::Unstorable);
    let what = Unstorable {
        type_name: type_name.to_owned(),
        reason: reason.to_owned(),
    };
    serde_json::to_writer(&mut out, &what).expect("two strings serialize");
    out.push(b'}');
    out
}

/// The envelope up to its value.
fn head(fingerprint: Option<&Fingerprint>, side: RecordSide) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(HEAD.as_bytes());
    match fingerprint {
        Some(fp) => {
            out.push(b'"');
            out.extend_from_slice(fp.to_hex().as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(match side {
        RecordSide::Ok => b",\"ok\":",
        RecordSide::Err => b",\"err\":",
        RecordSide::Unstorable => b",\"unstorable\":",
    });
    out
}

/// What a shape says of an unstorable record (the engine reports those before asking it).
const NO_VALUE: &str = "the record holds no value: the first call's result could not be stored";

fn decode<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    // Parsed as text checked once (by the caller, with the rest of the envelope), which is
    // cheaper than serde_json's check of each string in it.
    serde_json::from_str(json).map_err(|e| e.to_string())
}

/// What to do with a body's result.
pub(crate) enum Disposition {
    /// Store these bytes and replay them.
    Store(Vec<u8>),
    /// Do not store: release the key so that a retry runs again (a transient error).
    Release,
    /// The result cannot be stored so that it reads back as its type (the reason); it is
    /// returned to its caller, and later calls are told why.
    Unstorable(String),
}

/// How one kind of function result is stored and replayed.
pub(crate) trait Codec<R> {
    /// Decides what to store for `value`.
    fn seal(&mut self, value: &R, fingerprint: Option<&Fingerprint>) -> Disposition;
    /// Rebuilds a stored result.
    fn open(&self, envelope: &Envelope<'_>) -> Result<R, String>;
    /// The Rust type a record is decoded as, for [`Error::Decode`](crate::Error::Decode).
    fn type_name(&self) -> &'static str;
    /// Whether [`seal`](Codec::seal) may answer [`Disposition::Release`] (the transactional mode
    /// takes a savepoint before the body only then).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    fn may_release(&self) -> bool {
        true
    }
}

fn seal_or_report<V: Serialize + DeserializeOwned>(
    fp: Option<&Fingerprint>,
    side: RecordSide,
    value: &V,
) -> Disposition {
    match seal(fp, side, value) {
        Ok(bytes) => Disposition::Store(bytes),
        Err(reason) => Disposition::Unstorable(reason),
    }
}

/// A plain value: always stored.
pub(crate) struct PlainCodec<T>(PhantomData<fn() -> T>);

impl<T> PlainCodec<T> {
    pub(crate) fn new() -> Self {
        PlainCodec(PhantomData)
    }
}

impl<T: Serialize + DeserializeOwned> Codec<T> for PlainCodec<T> {
    fn seal(&mut self, value: &T, fp: Option<&Fingerprint>) -> Disposition {
        seal_or_report(fp, RecordSide::Ok, value)
    }

    fn open(&self, envelope: &Envelope<'_>) -> Result<T, String> {
        match envelope.side {
            RecordSide::Ok => decode(envelope.value),
            RecordSide::Err => {
                Err("the record holds an error, but this function returns no Result".into())
            }
            RecordSide::Unstorable => Err(NO_VALUE.into()),
        }
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }

    fn may_release(&self) -> bool {
        false
    }
}

/// A `Result` whose errors are transient: `Ok` stored, `Err` released.
pub(crate) struct ResultCodec<T, E>(PhantomData<fn() -> (T, E)>);

impl<T, E> ResultCodec<T, E> {
    pub(crate) fn new() -> Self {
        ResultCodec(PhantomData)
    }
}

impl<T: Serialize + DeserializeOwned, E> Codec<Result<T, E>> for ResultCodec<T, E> {
    fn seal(&mut self, value: &Result<T, E>, fp: Option<&Fingerprint>) -> Disposition {
        match value {
            Ok(value) => seal_or_report(fp, RecordSide::Ok, value),
            Err(_) => Disposition::Release,
        }
    }

    fn open(&self, envelope: &Envelope<'_>) -> Result<Result<T, E>, String> {
        match envelope.side {
            RecordSide::Ok => decode(envelope.value).map(Ok),
            RecordSide::Err => {
                Err("the record holds an error, but this function does not cache errors".into())
            }
            RecordSide::Unstorable => Err(NO_VALUE.into()),
        }
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

/// A `Result` with `cache_err`: `Ok` stored, `Err` stored when the predicate says it is
/// permanent.
pub(crate) struct CachingCodec<T, E, P> {
    cache_err: Option<P>,
    /// The predicate says yes to every error (`cache_err = true`).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    every: bool,
    types: PhantomData<fn() -> (T, E)>,
}

impl<T, E, P> CachingCodec<T, E, P> {
    pub(crate) fn new(cache_err: P) -> Self {
        CachingCodec {
            cache_err: Some(cache_err),
            every: false,
            types: PhantomData,
        }
    }

    /// A shape whose `cache_err` stores every error: it never releases.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn every(cache_err: P) -> Self {
        CachingCodec {
            every: true,
            ..CachingCodec::new(cache_err)
        }
    }
}

impl<T, E, P> Codec<Result<T, E>> for CachingCodec<T, E, P>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
    P: FnOnce(&E) -> bool,
{
    fn seal(&mut self, value: &Result<T, E>, fp: Option<&Fingerprint>) -> Disposition {
        match value {
            Ok(value) => seal_or_report(fp, RecordSide::Ok, value),
            Err(error)
                if self
                    .cache_err
                    .take()
                    .is_some_and(|permanent| permanent(error)) =>
            {
                seal_or_report(fp, RecordSide::Err, error)
            }
            Err(_) => Disposition::Release,
        }
    }

    fn open(&self, envelope: &Envelope<'_>) -> Result<Result<T, E>, String> {
        match envelope.side {
            RecordSide::Ok => decode(envelope.value).map(Ok),
            RecordSide::Err => decode(envelope.value).map(Err),
            RecordSide::Unstorable => Err(NO_VALUE.into()),
        }
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<Result<T, E>>()
    }

    fn may_release(&self) -> bool {
        !self.every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_is_readable() {
        let fp = Fingerprint::of_bytes(b"req");
        let bytes = seal(Some(&fp), RecordSide::Ok, &vec![1, 2, 3]).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with("{\"v\":1,\"codec\":\"json\",\"fp\":\""),
            "{text}"
        );
        assert!(text.ends_with(",\"ok\":[1,2,3]}"), "{text}");
        let envelope = open(&bytes).unwrap();
        assert_eq!(envelope.fingerprint, Some(fp));
        assert_eq!(
            PlainCodec::<Vec<u8>>::new().open(&envelope).unwrap(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn null_values_are_values() {
        for bytes in [
            seal(None, RecordSide::Ok, &()).unwrap(),
            seal(None, RecordSide::Ok, &None::<u8>).unwrap(),
        ] {
            let envelope = open(&bytes).unwrap();
            assert_eq!(envelope.value, "null");
        }
    }

    #[test]
    fn bad_envelopes_are_reported() {
        for (bytes, expect) in [
            (&b"garbage"[..], "not an idem envelope"),
            (
                b"{\"v\":2,\"codec\":\"json\",\"fp\":null,\"ok\":1}",
                "version 2",
            ),
            (
                b"{\"v\":1,\"codec\":\"cbor\",\"fp\":null,\"ok\":1}",
                "codec `cbor`",
            ),
            (
                b"{\"v\":1,\"codec\":\"json\",\"fp\":\"zz\",\"ok\":1}",
                "fingerprint",
            ),
            (b"{\"v\":1,\"codec\":\"json\",\"fp\":null}", "exactly one"),
        ] {
            let error = open(bytes).err().expect("must fail");
            assert!(error.contains(expect), "{error}");
        }
    }

    #[test]
    fn caching_shape_stores_only_permanent_errors() {
        let mut shape = CachingCodec::<u8, String, _>::new(|e: &String| e == "permanent");
        assert!(matches!(
            shape.seal(&Err("transient".into()), None),
            Disposition::Release
        ));
        let mut shape = CachingCodec::<u8, String, _>::new(|e: &String| e == "permanent");
        let Disposition::Store(bytes) = shape.seal(&Err("permanent".into()), None) else {
            panic!("a permanent error is stored")
        };
        assert_eq!(
            shape.open(&open(&bytes).unwrap()).unwrap(),
            Err("permanent".into())
        );
    }

    /// Only a codec that can answer `Release` says it may: a plain value never does, a
    /// `Result` does for its errors, and a `cache_err` codec unless it stores every error.
    #[test]
    fn codecs_say_whether_they_may_release() {
        assert!(!PlainCodec::<u8>::new().may_release());
        assert!(ResultCodec::<u8, String>::new().may_release());
        let some = CachingCodec::<u8, String, _>::new(|e: &String| e == "permanent");
        assert!(some.may_release());
        let mut every = CachingCodec::<u8, String, _>::every(|_: &String| true);
        assert!(!every.may_release());
        assert!(matches!(
            every.seal(&Err("any".into()), None),
            Disposition::Store(_)
        ));
        let mut result = ResultCodec::<u8, String>::new();
        assert!(matches!(
            result.seal(&Err("e".into()), None),
            Disposition::Release
        ));
        assert!(matches!(result.seal(&Ok(1), None), Disposition::Store(_)));
        assert!(matches!(
            PlainCodec::<u8>::new().seal(&1, None),
            Disposition::Store(_)
        ));
    }

    /// Each codec names the type its records are decoded as, for `Error::Decode`.
    #[test]
    fn codecs_name_their_type() {
        use std::any::type_name;
        assert_eq!(PlainCodec::<u8>::new().type_name(), type_name::<u8>());
        // Only its `Ok` values are stored: they are what a record is decoded as.
        assert_eq!(
            ResultCodec::<u8, String>::new().type_name(),
            type_name::<u8>()
        );
        let caching = CachingCodec::<u8, String, _>::new(|_: &String| true);
        assert_eq!(caching.type_name(), type_name::<Result<u8, String>>());
    }

    #[test]
    fn written_envelopes_are_read_in_place_like_parsed_ones() {
        let fp = Fingerprint::of_bytes(b"req");
        for (fingerprint, side) in [(Some(&fp), RecordSide::Ok), (None, RecordSide::Err)] {
            let bytes = seal(fingerprint, side, &("x".to_owned(), [1, 2])).unwrap();
            let quick = open_written(std::str::from_utf8(&bytes).unwrap()).expect("as written");
            let parsed = open(&bytes).unwrap();
            assert_eq!(quick.fingerprint, parsed.fingerprint);
            assert_eq!(quick.value, parsed.value);
            assert_eq!(quick.value, r#"["x",[1,2]]"#);
            assert!(matches!(
                (quick.side, parsed.side),
                (RecordSide::Ok, RecordSide::Ok) | (RecordSide::Err, RecordSide::Err)
            ));
        }
    }

    #[test]
    fn other_layouts_are_left_to_the_parser() {
        for bytes in [
            &b"{ \"v\":1,\"codec\":\"json\",\"fp\":null,\"ok\":1}"[..],
            b"{\"v\":1,\"codec\":\"json\",\"fp\":\"zz\",\"ok\":1}",
            b"{\"v\":1,\"codec\":\"json\",\"fp\":null,\"value\":1}",
            b"{\"v\":1,\"codec\":\"json\",\"fp\":null,\"ok\":1",
            b"{\"v\":1,\"codec\":\"json\",\"fp\":nul",
        ] {
            assert!(
                open_written(std::str::from_utf8(bytes).unwrap()).is_none(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Laid out as written but not one value: decoding fails, so the parser decides.
        let two = b"{\"v\":1,\"codec\":\"json\",\"fp\":null,\"ok\":1,\"err\":2}";
        let quick = open_written(std::str::from_utf8(two).unwrap()).expect("the layout matches");
        assert!(PlainCodec::<u8>::new().open(&quick).is_err());
        assert!(open(two).is_err());
    }

    #[test]
    fn the_fingerprint_is_read_from_the_head() {
        let fp = Fingerprint::of_bytes(b"req");
        let sealed = seal(Some(&fp), RecordSide::Ok, &vec![1, 2, 3]).unwrap();
        assert_eq!(fingerprint_of(&sealed), Some(fp));
        let without = seal(None, RecordSide::Ok, &1_u8).unwrap();
        assert_eq!(fingerprint_of(&without), None);
        for other in [&b""[..], b"{\"v\":1}", b"claim:1:", &sealed[..40]] {
            assert_eq!(fingerprint_of(other), None);
        }
    }
}
