//! Keys, signatures and the small value types every certificate is made of.
//!
//! Every principal (org root, admin, user, device, relay, GPU peer) is an ed25519 keypair. A
//! public key is written the way libp2p writes a peer id (`12D3KooW…`), so the id a user sees in
//! `jarvis whoami`, the id an admin types into `jarvis admin revoke --device`, and the libp2p
//! `PeerId` the transport authenticates are one and the same string.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::encoding::{DecodeError, Reader, Writer};

/// Domain-separation tags: every signature covers `tag || canonical bytes`. Each tag ends in a
/// NUL byte, so no tag is a prefix of another and a signature made for one purpose never verifies
/// for another.
pub(crate) mod domain {
    pub const CERTIFICATE: &[u8] = b"jarvis/certificate/v1\0";
    pub const REVOCATION: &[u8] = b"jarvis/revocation/v1\0";
    pub const REQUEST: &[u8] = b"jarvis/join-request/v1\0";
    pub const AUDIT: &[u8] = b"jarvis/audit-entry/v1\0";
}

/// Random bytes from the operating system's random source.
///
/// # Panics
/// Only if the OS has no entropy source at all, in which case no key can be made safely.
#[allow(clippy::expect_used)]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// Identity multihash header (0x00, length 0x24) + protobuf key type Ed25519 (0x08 0x01) + data
/// field header (0x12, length 0x20): the fixed prefix of every ed25519 libp2p peer id.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// An ed25519 public key: the identity of one principal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

/// A public key string that is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{input}` is not a Jarvis id (expected a peer id like 12D3KooW…): {reason}")]
pub struct ParseIdError {
    input: String,
    reason: String,
}

impl PublicKey {
    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    /// Accepts only points that are valid ed25519 public keys.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, DecodeError> {
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| DecodeError::invalid("public key", "not a valid ed25519 point"))?;
        Ok(Self(bytes))
    }

    fn verifying_key(self) -> Result<VerifyingKey, SignatureError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError)
    }

    /// Verifies `signature` over `domain || message` with strict (non-malleable) ed25519.
    pub fn verify(
        self,
        domain: &[u8],
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let key = self.verifying_key()?;
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        key.verify_strict(&signed, &ed25519_dalek::Signature::from_bytes(&signature.0))
            .map_err(|_| SignatureError)
    }

    /// The libp2p peer-id bytes of this key: an identity multihash (code 0, length 36) of the
    /// protobuf `PublicKey { Type: Ed25519 (1), Data: key }`. Written out by hand so that showing
    /// an id can never fail; a test checks it against libp2p's own `PeerId`.
    fn peer_id_bytes(self) -> [u8; 38] {
        let mut out = [0u8; 38];
        let (prefix, key) = out.split_at_mut(PEER_ID_PREFIX.len());
        prefix.copy_from_slice(&PEER_ID_PREFIX);
        key.copy_from_slice(&self.0);
        out
    }

    /// The libp2p peer id of this key, as the transport authenticates it.
    pub fn to_libp2p_peer_id(
        self,
    ) -> Result<libp2p_identity::PeerId, libp2p_identity::DecodingError> {
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0)?;
        Ok(libp2p_identity::PublicKey::from(key).to_peer_id())
    }

    pub fn write(self, w: &mut Writer) {
        w.fixed(&self.0);
    }

    pub fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        let bytes = r.array::<32>(what)?;
        Self::from_bytes(bytes).map_err(|_| DecodeError::invalid(what, "not a valid ed25519 point"))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.peer_id_bytes()).into_string())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseIdError {
            input: s.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        let bytes = bs58::decode(s.trim())
            .into_vec()
            .map_err(|e| err(&e.to_string()))?;
        let key = bytes
            .strip_prefix(&PEER_ID_PREFIX)
            .ok_or_else(|| err("not an inline ed25519 peer id"))?;
        let key: [u8; 32] = key.try_into().map_err(|_| err("wrong length"))?;
        Self::from_bytes(key).map_err(|e| err(&e.to_string()))
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

impl Signature {
    pub fn write(&self, w: &mut Writer) {
        w.fixed(&self.0);
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array::<64>("signature")?))
    }

    pub fn to_bytes(self) -> [u8; 64] {
        self.0
    }

    /// Wraps bytes without checking them; they are checked when verified.
    pub fn from_bytes_unchecked(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({}…)",
            hex::encode(self.0.get(..8).unwrap_or_default())
        )
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("signature does not verify")]
pub struct SignatureError;

/// An ed25519 secret key. Zeroized on drop; `Debug` shows only the public half; it has no
/// `Display` and no serializer, so it cannot be printed or saved by accident. Use
/// [`crate::sealed`] to store it.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let seed = Zeroizing::new(random_bytes::<32>());
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for sealing. The caller keeps it in a `Zeroizing` buffer.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `domain || message`. `domain` must be a tag no other use shares, ending in a NUL
    /// byte (see the tags in this module and in `jarvis-crdt`).
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        Signature(self.0.sign(&signed).to_bytes())
    }

    /// The same key as a libp2p keypair, so the device's transport identity is its device key.
    pub fn to_libp2p_keypair(
        &self,
    ) -> Result<libp2p_identity::Keypair, libp2p_identity::DecodingError> {
        let mut seed = self.0.to_bytes();
        // `ed25519_from_bytes` zeroizes the buffer it is given.
        libp2p_identity::Keypair::ed25519_from_bytes(&mut seed)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretKey(public: {}, secret: <redacted>)",
            self.public()
        )
    }
}

/// Seconds since the Unix epoch. The library never reads a clock: callers pass `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(pub u64);

impl UnixTime {
    pub fn saturating_add_secs(self, secs: u64) -> Self {
        Self(self.0.saturating_add(secs))
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 3339 in UTC without pulling in a date crate: civil-from-days (H. Hinnant).
        let secs = self.0;
        let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// A human-chosen name (org, user, device, relay): 1 to 64 bytes of UTF-8 without control
/// characters or leading/trailing spaces, so it prints safely in a terminal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub const MAX_BYTES: usize = 64;

    pub fn new(s: &str) -> Result<Self, DecodeError> {
        if s.is_empty() {
            return Err(DecodeError::invalid("name", "empty"));
        }
        if s.len() > Self::MAX_BYTES {
            return Err(DecodeError::TooLong {
                what: "name",
                len: s.len(),
                max: Self::MAX_BYTES,
            });
        }
        if s.chars().any(char::is_control) {
            return Err(DecodeError::invalid("name", "contains control characters"));
        }
        // Characters that change how text around them is shown, or show as nothing: a name
        // must read as what it is (`alice` and `al\u{200b}ice`, or a right-to-left override
        // that shows `ecila`, must not pass for one another on an admin's screen).
        if s.chars().any(is_invisible_or_reordering) {
            return Err(DecodeError::invalid(
                "name",
                "contains invisible or text-direction characters",
            ));
        }
        if s.trim() != s {
            return Err(DecodeError::invalid("name", "starts or ends with a space"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.str(&self.0);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::new(r.str("name", Self::MAX_BYTES)?)
    }
}

/// Bidirectional controls and zero-width characters (Unicode's default-ignorable format
/// characters that names have no use for).
fn is_invisible_or_reordering(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for Name {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A random 128-bit serial number identifying one certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(pub [u8; 16]);

impl Serial {
    pub fn random() -> Self {
        Self(random_bytes())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_through_its_peer_id_string() {
        let key = SecretKey::generate();
        let id = key.public().to_string();
        assert!(id.starts_with("12D3KooW"), "{id}");
        assert_eq!(id.parse::<PublicKey>().unwrap(), key.public());
        assert_eq!(
            key.to_libp2p_keypair()
                .unwrap()
                .public()
                .to_peer_id()
                .to_string(),
            id
        );
        assert!("12D3KooWnotanid".parse::<PublicKey>().is_err());
        assert!(
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
                .parse::<PublicKey>()
                .is_err()
        );
    }

    #[test]
    fn signatures_are_domain_separated() {
        let key = SecretKey::generate();
        let sig = key.sign(domain::CERTIFICATE, b"msg");
        key.public()
            .verify(domain::CERTIFICATE, b"msg", &sig)
            .unwrap();
        assert!(
            key.public()
                .verify(domain::REVOCATION, b"msg", &sig)
                .is_err()
        );
        assert!(
            key.public()
                .verify(domain::CERTIFICATE, b"msh", &sig)
                .is_err()
        );
    }

    #[test]
    fn secret_key_debug_does_not_print_the_secret() {
        let key = SecretKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode(*key.seed())));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn unix_time_prints_rfc3339() {
        assert_eq!(UnixTime(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(UnixTime(1_795_000_000).to_string(), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn names_reject_control_characters_and_padding() {
        assert!(Name::new("alice").is_ok());
        assert!(Name::new("Alice's MacBook").is_ok());
        assert!(Name::new("").is_err());
        assert!(Name::new(" bob").is_err());
        assert!(Name::new("evil\x1b[2J").is_err());
        assert!(Name::new(&"x".repeat(65)).is_err());
    }

    /// #20 (low): a name that hides characters or reverses how it reads is refused, so
    /// `al\u{200b}ice` cannot pass for `alice` and `\u{202e}ecila` cannot show as `alice`.
    #[test]
    fn names_reject_invisible_and_direction_characters() {
        for sneaky in [
            "al\u{200b}ice",
            "\u{202e}ecila",
            "alice\u{2066}",
            "ali\u{feff}ce",
            "a\u{00ad}lice",
            "alice\u{e0041}",
        ] {
            let err = Name::new(sneaky).unwrap_err();
            assert!(err.to_string().contains("invisible"), "{sneaky:?}: {err}");
        }
        // Letters of any script still make names.
        for fine in ["Zoë", "محمد", "李雷", "Ŝtefan's phone", "אבי"] {
            assert!(Name::new(fine).is_ok(), "{fine}");
        }
    }
}
