//! Text armour for everything a person copies between machines: invites, join requests and
//! bundles.
//!
//! `<prefix>_<base58(bytes || checksum)>`: the prefix says what the text is, base58 has no
//! characters that terminals or chat apps mangle and selects with one double-click, and the
//! 4-byte SHA-256 checksum turns a mistyped or truncated paste into "damaged token" instead of a
//! confusing decode or signature error.

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::encoding::DecodeError;

/// Longest armoured text accepted, before decoding anything.
pub const MAX_TOKEN_CHARS: usize = 16 * 1024;
const CHECKSUM_BYTES: usize = 4;

/// What kind of text a token is, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An admin's invite for a user's first device.
    Invite,
    /// A new device's or infrastructure peer's request to be certified.
    Request,
    /// The certificates that answer a request.
    Bundle,
    /// What a new device needs to reach an existing one and prove it was shown the code.
    Pairing,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Invite => "jvinvite",
            Self::Request => "jvrequest",
            Self::Bundle => "jvbundle",
            Self::Pairing => "jvpair",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Invite => "invite",
            Self::Request => "join request",
            Self::Bundle => "certificate bundle",
            Self::Pairing => "pairing code",
        }
    }

    /// Which kind of token `text` claims to be, from its prefix alone.
    pub fn sniff(text: &str) -> Option<Self> {
        let (prefix, _) = text.trim().split_once('_')?;
        [Self::Invite, Self::Request, Self::Bundle, Self::Pairing]
            .into_iter()
            .find(|kind| kind.prefix() == prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("this is not a Jarvis {expected} (it should start with `{prefix}_`)")]
    WrongKind {
        expected: &'static str,
        prefix: &'static str,
    },
    #[error("the token is {0} characters long, more than any Jarvis token")]
    TooLong(usize),
    #[error(
        "the {0} is damaged (a character was changed, added or lost when copying): copy it again"
    )]
    Damaged(&'static str),
    #[error("the {what} could not be read: {source}")]
    Malformed {
        what: &'static str,
        source: DecodeError,
    },
}

fn checksum(kind: TokenKind, bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let digest = Sha256::new()
        .chain_update(kind.prefix())
        .chain_update(bytes)
        .finalize();
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(digest.get(..CHECKSUM_BYTES).unwrap_or(&[0; CHECKSUM_BYTES]));
    out
}

pub fn armor(kind: TokenKind, bytes: &[u8]) -> String {
    let mut payload = bytes.to_vec();
    payload.extend_from_slice(&checksum(kind, bytes));
    format!("{}_{}", kind.prefix(), bs58::encode(payload).into_string())
}

/// The bytes inside a token of `kind`, checksum verified. Whitespace around the token (and line
/// breaks inside it, from wrapped terminals or e-mail) is ignored.
pub fn dearmor(kind: TokenKind, text: &str) -> Result<Vec<u8>, TokenError> {
    if text.len() > MAX_TOKEN_CHARS {
        return Err(TokenError::TooLong(text.len()));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let body = compact
        .strip_prefix(kind.prefix())
        .and_then(|rest| rest.strip_prefix('_'))
        .ok_or(TokenError::WrongKind {
            expected: kind.describe(),
            prefix: kind.prefix(),
        })?;
    let payload = bs58::decode(body)
        .into_vec()
        .map_err(|_| TokenError::Damaged(kind.describe()))?;
    let split = payload
        .len()
        .checked_sub(CHECKSUM_BYTES)
        .ok_or(TokenError::Damaged(kind.describe()))?;
    let (bytes, sum) = payload.split_at(split);
    if sum != checksum(kind, bytes) {
        return Err(TokenError::Damaged(kind.describe()));
    }
    Ok(bytes.to_vec())
}

pub(crate) fn malformed(kind: TokenKind) -> impl Fn(DecodeError) -> TokenError {
    move |source| TokenError::Malformed {
        what: kind.describe(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let text = armor(TokenKind::Invite, b"hello world");
        assert!(text.starts_with("jvinvite_"));
        assert_eq!(dearmor(TokenKind::Invite, &text).unwrap(), b"hello world");
        let wrapped = format!("  {}\n{}  ", &text[..20], &text[20..]);
        assert_eq!(
            dearmor(TokenKind::Invite, &wrapped).unwrap(),
            b"hello world"
        );
        assert!(matches!(
            dearmor(TokenKind::Bundle, &text),
            Err(TokenError::WrongKind { .. })
        ));
        let mut damaged = text.clone().into_bytes();
        let last = damaged.len() - 3;
        damaged[last] = if damaged[last] == b'2' { b'3' } else { b'2' };
        let damaged = String::from_utf8(damaged).unwrap();
        assert_eq!(
            dearmor(TokenKind::Invite, &damaged),
            Err(TokenError::Damaged("invite"))
        );
        assert_eq!(TokenKind::sniff(&text), Some(TokenKind::Invite));
    }
}
