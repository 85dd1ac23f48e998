//! The record a store keeps per key, and the claim that marks a call in progress.

use std::fmt;
use std::time::Duration;

/// The random token of one claim: the fencing token that makes complete, release and renew
/// compare-and-set operations. 128 random bits, so two claims never share one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(u128);

impl Token {
    /// The holder a store reports for a key held by a claim it cannot see: a caller's
    /// transaction that has not ended holds the key's row (PostgreSQL) or the database's write
    /// lock (SQLite). No random token is all zeros.
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    pub(crate) const UNSEEN: Token = Token(0);

    /// A new random token.
    pub fn random() -> Self {
        Token(rand::random())
    }

    /// The token as 32 lowercase hex digits.
    pub fn to_hex(self) -> String {
        String::from_utf8(self.hex_digits().to_vec()).expect("hex digits are ASCII")
    }

    /// The 32 lowercase hex digits, without the formatting machinery: claims are written on
    /// every call.
    fn hex_digits(self) -> [u8; 32] {
        hex_u128(self.0)
    }

    /// The token's 16 bytes, big-endian: its form in a binary column.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The token of 16 bytes written by [`Token::to_bytes`].
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Token(u128::from_be_bytes(bytes))
    }

    fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(Token)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:032x})", self.0)
    }
}

/// The SHA-256 hash of a request, stored with its record so that the same key sent with a
/// different request is detected ([`Error::KeyMismatch`](crate::Error::KeyMismatch)).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `bytes` (SHA-256).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Fingerprint(sha2::Sha256::digest(bytes).into())
    }

    /// The fingerprint of a value: SHA-256 of its JSON serialization.
    pub fn of<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(value).map(|bytes| Fingerprint::of_bytes(&bytes))
    }

    /// The fingerprint as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The 32 bytes of the hash: its form in a binary column.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The fingerprint whose hash is `bytes` (as returned by [`Fingerprint::as_bytes`]).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// Parses 64 hex digits back into a fingerprint.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        Some(Fingerprint(bytes))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// A call's claim on a key: the record of a call in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The fencing token of this claim.
    pub token: Token,
    /// The fingerprint of the request that made the claim, if the function has one.
    pub fingerprint: Option<Fingerprint>,
}

/// The prefix of a claim's byte form: a completed payload (a JSON envelope) never starts
/// with it.
pub(crate) const CLAIM_MARK: &str = "claim:1:";

impl Claim {
    /// A new claim with a random token.
    pub fn new(fingerprint: Option<Fingerprint>) -> Self {
        Claim {
            token: Token::random(),
            fingerprint,
        }
    }

    /// The byte form of the claim, for stores that keep records as bytes:
    /// `claim:1:<token>:<fingerprint or ->`. Two claims have the same byte form exactly when
    /// they are equal, so a store can fence by comparing bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encoded().to_vec()
    }

    /// The byte form of [`Claim::to_bytes`], written on the stack: a store that sends it and
    /// lets it go allocates nothing for it.
    pub(crate) fn encoded(&self) -> ClaimBytes {
        let mut bytes = [0u8; CLAIM_BYTES];
        let mark = CLAIM_MARK.len();
        bytes[..mark].copy_from_slice(CLAIM_MARK.as_bytes());
        bytes[mark..mark + 32].copy_from_slice(&hex_u128(self.token.0));
        bytes[mark + 32] = b':';
        let at = mark + 33;
        let len = match &self.fingerprint {
            Some(fp) => {
                let digits = bytes[at..].first_chunk_mut().expect("room for 64 digits");
                write_hex_32(&fp.0, digits);
                at + 64
            }
            None => {
                bytes[at] = b'-';
                at + 1
            }
        };
        ClaimBytes { bytes, len }
    }

    /// Reads the byte form written by [`Claim::to_bytes`]; `None` if `bytes` is not a claim.
    pub fn from_bytes(bytes: &[u8]) -> Option<Claim> {
        // The mark first: a completed payload is told apart without reading it whole.
        let text = std::str::from_utf8(bytes.strip_prefix(CLAIM_MARK.as_bytes())?).ok()?;
        let (token, fp) = text.split_once(':')?;
        let fingerprint = match fp {
            "-" => None,
            hex => Some(Fingerprint::from_hex(hex)?),
        };
        Some(Claim {
            token: Token::from_hex(token)?,
            fingerprint,
        })
    }
}

/// The longest byte form of a claim: the mark, the token, `:` and a fingerprint.
const CLAIM_BYTES: usize = CLAIM_MARK.len() + 32 + 1 + 64;

/// A claim's byte form, held on the stack (see [`Claim::encoded`]).
#[derive(Clone, Copy)]
pub(crate) struct ClaimBytes {
    bytes: [u8; CLAIM_BYTES],
    len: usize,
}

impl std::ops::Deref for ClaimBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Writes the 32 bytes of `bytes` as 64 lowercase hex digits into `out`.
fn write_hex_32(bytes: &[u8; 32], out: &mut [u8; 64]) {
    for at in 0..4 {
        let word = u64::from_be_bytes(*bytes[8 * at..].first_chunk().expect("8 bytes"));
        out[16 * at..16 * at + 16].copy_from_slice(&hex_word(word));
    }
}

/// The 32 lowercase hex digits of `value`, most significant first.
fn hex_u128(value: u128) -> [u8; 32] {
    let mut digits = [0u8; 32];
    digits[..16].copy_from_slice(&hex_word((value >> 64) as u64));
    digits[16..].copy_from_slice(&hex_word(value as u64));
    digits
}

/// The 16 lowercase hex digits of `word`, most significant first, computed in one 128-bit
/// integer instead of digit by digit.
fn hex_word(word: u64) -> [u8; 16] {
    // Each nibble k of `word` into byte k of `x` (bits 8k..8k+3): halves, quarters, bytes,
    // then nibbles, each moved up by the width of the piece below it.
    let x = u128::from(word);
    let x = (x & 0xffff_ffff) | ((x & 0xffff_ffff_0000_0000) << 32);
    let x = (x & 0x0000_0000_0000_ffff_0000_0000_0000_ffff)
        | ((x & 0x0000_0000_ffff_0000_0000_0000_ffff_0000) << 16);
    let x = (x & 0x0000_00ff_0000_00ff_0000_00ff_0000_00ff)
        | ((x & 0x0000_ff00_0000_ff00_0000_ff00_0000_ff00) << 8);
    let x = (x & 0x000f_000f_000f_000f_000f_000f_000f_000f)
        | ((x & 0x00f0_00f0_00f0_00f0_00f0_00f0_00f0_00f0) << 4);
    // Each byte n (0 to 15) to its digit: '0' + n, and 'a' - '0' - 10 = 0x27 more when n > 9
    // (n + 6 reaches bit 4 exactly then). No byte carries into the next.
    const ONES: u128 = u128::MAX / 0xff;
    let letters = ((x + 6 * ONES) >> 4) & ONES;
    (x + 0x30 * ONES + 0x27 * letters).to_be_bytes()
}

/// What a store holds under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A call is running; its claim expires with its lease unless renewed.
    InProgress(Claim),
    /// A call completed; the payload is the encoded envelope of its result, replayed until the
    /// retention ttl ends.
    Completed {
        /// The encoded envelope of the result.
        payload: Vec<u8>,
        /// How long the record still lives, when the store can tell without another round
        /// trip (an in-process cache keeps a replay no longer than this); `None` if unknown.
        expires_in: Option<Duration>,
    },
}

impl Record {
    /// Reads a record from its byte form (with no known expiry): a claim's bytes are
    /// [`Record::InProgress`], anything else is a completed payload (which the engine decodes, reporting corrupt bytes as
    /// [`Error::Decode`](crate::Error::Decode)).
    pub fn from_bytes(bytes: Vec<u8>) -> Record {
        match Claim::from_bytes(&bytes) {
            Some(claim) => Record::InProgress(claim),
            None => Record::Completed {
                payload: bytes,
                expires_in: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_bytes_round_trip() {
        let with_fp = Claim::new(Some(Fingerprint::of_bytes(b"request")));
        let without = Claim::new(None);
        for claim in [with_fp, without] {
            let bytes = claim.to_bytes();
            assert_eq!(Claim::from_bytes(&bytes), Some(claim.clone()));
            assert_eq!(Record::from_bytes(bytes), Record::InProgress(claim));
        }
    }

    #[test]
    fn anything_else_is_a_payload() {
        for bytes in [
            &b"{\"v\":1}"[..],
            b"claim:1:zz:-",
            b"claim:1:",
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(
                Record::from_bytes(bytes.to_vec()),
                Record::Completed {
                    payload: bytes.to_vec(),
                    expires_in: None
                }
            );
        }
    }

    #[test]
    fn claim_bytes_are_the_documented_form() {
        let claim = Claim {
            token: Token(0xab),
            fingerprint: None,
        };
        assert_eq!(
            claim.to_bytes(),
            b"claim:1:000000000000000000000000000000ab:-".to_vec()
        );
        assert_eq!(
            Token(u128::MAX - 1).to_hex(),
            format!("{:032x}", u128::MAX - 1)
        );
        let fp = Fingerprint::of_bytes(b"request");
        let with_fp = Claim {
            token: Token(1),
            fingerprint: Some(fp),
        };
        assert_eq!(
            with_fp.to_bytes(),
            format!("claim:1:{:032x}:{}", 1, fp.to_hex()).into_bytes()
        );
    }

    #[test]
    fn the_encoded_form_is_the_byte_form() {
        let fp = Fingerprint::of_bytes(b"request");
        for claim in [Claim::new(Some(fp)), Claim::new(None)] {
            assert_eq!(claim.encoded().to_vec(), claim.to_bytes());
            let mut expected = format!("claim:1:{:032x}:", claim.token.0);
            match claim.fingerprint {
                Some(fp) => expected.push_str(&hex::encode(fp.as_bytes())),
                None => expected.push('-'),
            }
            assert_eq!(claim.to_bytes(), expected.into_bytes());
        }
    }

    #[test]
    fn hex_words_are_the_formatted_digits() {
        let mut word: u64 = 0x9e37_79b9_7f4a_7c15;
        let edges = [0, u64::MAX, 9, 10, 15, 16, 0x0123_4567_89ab_cdef];
        for n in 0..10_000 {
            word ^= word << 13;
            word ^= word >> 7;
            word ^= word << 17;
            let w = edges.get(n).copied().unwrap_or(word);
            assert_eq!(hex_word(w), format!("{w:016x}").as_bytes());
        }
        for start in [0u8, 32, 224] {
            let bytes: [u8; 32] = std::array::from_fn(|at| start.wrapping_add(at as u8 * 7));
            let mut out = [0; 64];
            write_hex_32(&bytes, &mut out);
            assert_eq!(out, hex::encode(bytes).as_bytes());
        }
        assert_eq!(
            hex_u128(u128::MAX - 0xa),
            format!("{:032x}", u128::MAX - 0xa).as_bytes()
        );
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(Token::random(), Token::random());
    }

    /// A token's bytes are its value, big-endian, and read back to the same token: an all-zero
    /// or reordered form would fence one claim with another's token.
    #[test]
    fn token_bytes_are_big_endian_and_read_back() {
        let token = Token(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let bytes: [u8; 16] = std::array::from_fn(|at| at as u8 + 1);
        assert_eq!(token.to_bytes(), bytes);
        assert_eq!(Token::from_bytes(bytes), token);
        let random = Token::random();
        assert_eq!(Token::from_bytes(random.to_bytes()), random);
        assert_ne!(Token::from_bytes([0; 16]), token);
        assert_eq!(token.to_hex(), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(
            format!("{token:?}"),
            "Token(0102030405060708090a0b0c0d0e0f10)"
        );
    }

    /// A token is exactly 32 hex digits: one digit more or less is not a claim.
    #[test]
    fn a_token_of_another_length_is_not_a_claim() {
        let digits = "0123456789abcdef0123456789abcdef";
        assert!(Claim::from_bytes(format!("claim:1:{digits}:-").as_bytes()).is_some());
        for token in [&digits[1..], &format!("{digits}0")[..], ""] {
            let bytes = format!("claim:1:{token}:-");
            assert_eq!(Claim::from_bytes(bytes.as_bytes()), None, "{bytes}");
        }
        let fp = Fingerprint::of_bytes(b"request");
        let short = &fp.to_hex()[1..];
        assert_eq!(
            Claim::from_bytes(format!("claim:1:{digits}:{short}").as_bytes()),
            None
        );
    }

    #[test]
    fn fingerprints_round_trip_through_hex_and_bytes() {
        let fp = Fingerprint::of_bytes(b"request");
        // SHA-256 of `request`.
        assert_eq!(
            fp.to_hex(),
            "1f58b9145b24d108d7ac38887338b3ea3229833b9c1e418250343f907bfd1047"
        );
        assert_eq!(Fingerprint::from_hex(&fp.to_hex()), Some(fp));
        assert_eq!(Fingerprint::from_bytes(*fp.as_bytes()), fp);
        assert_ne!(fp.as_bytes(), &[0; 32]);
        assert_eq!(
            Fingerprint::of(&"request").unwrap(),
            Fingerprint::of_bytes(b"\"request\"")
        );
        assert_eq!(format!("{fp:?}"), format!("Fingerprint({})", fp.to_hex()));
    }
}
