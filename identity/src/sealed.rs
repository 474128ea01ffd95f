//! Secret keys at rest, sealed with age under a passphrase (scrypt).
//!
//! The library only turns bytes into bytes; the caller reads and writes the file. Plaintext key
//! material only ever lives in `Zeroizing` buffers or in key types that zeroize on drop.

use std::io::{Read, Write};

use age::secrecy::{ExposeSecret, SecretString};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::encoding::{DecodeError, Reader, Writer};
use crate::keys::SecretKey;

const KEYS_VERSION: u8 = 1;
/// age's scrypt work factor (log2 N) for new files: 2^18 takes ~0.5 s here, which is what age
/// itself aims for interactively. Tests pass a smaller one; see [`MIN_WORK_FACTOR`].
pub const DEFAULT_WORK_FACTOR: u8 = 18;
/// Below 2^10 scrypt no longer slows a guesser down meaningfully; refuse it even in tests.
pub const MIN_WORK_FACTOR: u8 = 10;
/// A file asking for more than 2^22 would take many seconds and gigabytes: refuse rather than hang
/// on a hostile file.
const MAX_WORK_FACTOR: u8 = 22;

#[derive(Debug, Error)]
pub enum SealError {
    #[error("wrong passphrase (or the key file belongs to another home)")]
    WrongPassphrase,
    #[error("the key file is not an age passphrase file: {0}")]
    NotSealed(String),
    #[error("the key file's work factor is too high to open safely")]
    WorkFactorTooHigh,
    #[error("the passphrase is empty; choose one (or set JARVIS_PASSPHRASE)")]
    EmptyPassphrase,
    #[error("work factor {0} is below the minimum of {MIN_WORK_FACTOR}")]
    WorkFactorTooLow(u8),
    #[error("the decrypted key file is malformed: {0}")]
    Malformed(#[from] DecodeError),
    #[error("age failed: {0}")]
    Age(String),
}

/// The secrets of one home: its signing key and, for a device, its age identity.
pub struct KeyMaterial {
    pub signing: SecretKey,
    pub age: Option<age::x25519::Identity>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("signing", &self.signing)
            .field(
                "age",
                &self.age.as_ref().map(|id| id.to_public().to_string()),
            )
            .finish()
    }
}

impl KeyMaterial {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(KEYS_VERSION).fixed(&*self.signing.seed());
        match &self.age {
            Some(identity) => w.u8(1).str(identity.to_string().expose_secret()),
            None => w.u8(0),
        };
        Zeroizing::new(w.finish())
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("key file", KEYS_VERSION)?;
        let seed = Zeroizing::new(r.array::<32>("signing key")?);
        let age = if r.present("age identity")? {
            let text = Zeroizing::new(r.str("age identity", 128)?.to_owned());
            Some(
                text.parse::<age::x25519::Identity>()
                    .map_err(|_| DecodeError::invalid("age identity", "not an age secret key"))?,
            )
        } else {
            None
        };
        r.finish("key file")?;
        Ok(Self {
            signing: SecretKey::from_seed(&seed),
            age,
        })
    }
}

/// Encrypts `keys` under `passphrase` with scrypt work factor `work_factor` (log2 N).
pub fn seal(keys: &KeyMaterial, passphrase: &str, work_factor: u8) -> Result<Vec<u8>, SealError> {
    if passphrase.is_empty() {
        return Err(SealError::EmptyPassphrase);
    }
    if work_factor < MIN_WORK_FACTOR {
        return Err(SealError::WorkFactorTooLow(work_factor));
    }
    let mut recipient = age::scrypt::Recipient::new(SecretString::from(passphrase.to_owned()));
    recipient.set_work_factor(work_factor.min(MAX_WORK_FACTOR));
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| SealError::Age(e.to_string()))?;
    let mut out = Vec::new();
    let plaintext = keys.encode();
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| SealError::Age(e.to_string()))?;
    writer
        .write_all(&plaintext)
        .and_then(|()| writer.finish().map(drop))
        .map_err(|e| SealError::Age(e.to_string()))?;
    Ok(out)
}

/// Decrypts a file made by [`seal`].
pub fn unseal(sealed: &[u8], passphrase: &str) -> Result<KeyMaterial, SealError> {
    let decryptor =
        age::Decryptor::new_buffered(sealed).map_err(|e| SealError::NotSealed(e.to_string()))?;
    if !decryptor.is_scrypt() {
        return Err(SealError::NotSealed(
            "it is not passphrase-encrypted".into(),
        ));
    }
    let mut identity = age::scrypt::Identity::new(SecretString::from(passphrase.to_owned()));
    identity.set_max_work_factor(MAX_WORK_FACTOR);
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                SealError::WrongPassphrase
            }
            age::DecryptError::ExcessiveWork { .. } => SealError::WorkFactorTooHigh,
            other => SealError::NotSealed(other.to_string()),
        })?;
    let mut plaintext = Zeroizing::new(Vec::new());
    reader
        .read_to_end(&mut plaintext)
        .map_err(|_| SealError::WrongPassphrase)?;
    Ok(KeyMaterial::decode(&plaintext)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_refuses_a_wrong_passphrase() {
        let keys = KeyMaterial {
            signing: SecretKey::generate(),
            age: Some(age::x25519::Identity::generate()),
        };
        let sealed = seal(&keys, "correct horse", MIN_WORK_FACTOR).unwrap();
        let seed_hex = hex::encode(*keys.signing.seed());
        assert!(!hex::encode(&sealed).contains(&seed_hex));
        let opened = unseal(&sealed, "correct horse").unwrap();
        assert_eq!(opened.signing.public(), keys.signing.public());
        assert_eq!(
            opened.age.unwrap().to_public().to_string(),
            keys.age.as_ref().unwrap().to_public().to_string()
        );
        assert!(matches!(
            unseal(&sealed, "wrong"),
            Err(SealError::WrongPassphrase)
        ));
        assert!(matches!(
            unseal(b"not an age file", "x"),
            Err(SealError::NotSealed(_))
        ));
        assert!(matches!(
            seal(&keys, "", MIN_WORK_FACTOR),
            Err(SealError::EmptyPassphrase)
        ));
    }
}
