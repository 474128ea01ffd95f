//! The encryption envelope: per-epoch document keys, wrapped with age to each of the user's
//! devices, and changes sealed with XChaCha20-Poly1305 and signed by their author.
//!
//! ```text
//! SealedChange = header (doc, actor, seq, epoch) ‖ nonce ‖ AEAD(doc key[epoch], change, ad = header)
//!                ‖ ed25519 signature of the author device over all of it
//! KeyRecord    = (doc, epoch, author) ‖ age(epoch key → every device recipient) ‖ signature
//! ```
//!
//! A relay can check who wrote a change and where it goes (the header and signature are public)
//! but cannot read it. Revoking a device starts a new epoch whose key is wrapped only to the
//! remaining devices, so the revoked device cannot read anything sealed after that.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use jarvis_identity::encoding::{DecodeError, Reader, Writer};
use jarvis_identity::keys::random_bytes;
use jarvis_identity::{PublicKey, SecretKey, Signature};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::ids::{DocId, VersionVector};

const SEALED_CHANGE_VERSION: u8 = 1;
const KEY_RECORD_VERSION: u8 = 1;
const SNAPSHOT_VERSION: u8 = 1;
const CHANGE_DOMAIN: &[u8] = b"jarvis/sealed-change/v1\0";
const KEY_DOMAIN: &[u8] = b"jarvis/doc-key/v1\0";
const SNAPSHOT_DOMAIN: &[u8] = b"jarvis/snapshot/v1\0";
const AEAD_DOMAIN: &[u8] = b"jarvis/aead/v1\0";
/// One Automerge change: a streamed answer commits every few tokens, a pasted document at most a
/// few hundred KiB. Larger changes are split by the caller.
pub const MAX_CHANGE_BYTES: usize = 1 << 20;
/// An age file to a few hundred devices.
pub const MAX_WRAPPED_KEY_BYTES: usize = 64 * 1024;
/// A compacted conversation: 100,000 messages save to a few MiB.
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;
const NONCE_BYTES: usize = 24;
/// doc (16) + actor (32) + seq (8) + epoch (4).
const HEADER_BYTES: usize = 16 + 32 + 8 + 4;
const SIGNATURE_BYTES: usize = 64;
/// Poly1305 tag.
const TAG_BYTES: usize = 16;

/// An epoch's symmetric document key. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct DocKey(Zeroizing<[u8; 32]>);

impl DocKey {
    pub fn generate() -> Self {
        Self(Zeroizing::new(random_bytes()))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }

    /// XChaCha20-Poly1305 under this key. Encryption of an in-memory buffer cannot fail for
    /// sizes below the AEAD's limit (which every caller's maximum is far under).
    fn seal(
        &self,
        nonce: &[u8; NONCE_BYTES],
        msg: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.cipher()
            .encrypt(XNonce::from_slice(nonce), Payload { msg, aad })
            .map_err(|_| EnvelopeError::Decrypt)
    }

    /// Fails if the key is wrong or the ciphertext, nonce or associated data were altered.
    fn open(
        &self,
        nonce: &[u8; NONCE_BYTES],
        msg: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg, aad })
            .map_err(|_| EnvelopeError::Decrypt)
    }
}

impl std::fmt::Debug for DocKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DocKey(<redacted>)")
    }
}

#[derive(Debug, Error)]
pub enum EnvelopeError {
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("the signature does not verify: altered, forged, or from another actor")]
    BadSignature,
    #[error("decryption failed: wrong key for this epoch, or the ciphertext was altered")]
    Decrypt,
    #[error("no key for epoch {epoch} of document {doc}: this device was not given it")]
    NoKey { doc: DocId, epoch: u32 },
    #[error("this device is not a recipient of the key for epoch {epoch} of document {doc}")]
    NotARecipient { doc: DocId, epoch: u32 },
    #[error("the change is {0} bytes, more than {MAX_CHANGE_BYTES}")]
    TooLarge(usize),
    #[error("age: {0}")]
    Age(String),
}

/// What identifies a change, visible to anyone (relays included) and bound to the ciphertext as
/// associated data, so a ciphertext cannot be replayed under another document, actor, sequence
/// number or epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChangeHeader {
    pub doc: DocId,
    pub actor: PublicKey,
    pub seq: u64,
    pub epoch: u32,
}

impl ChangeHeader {
    fn write(&self, w: &mut Writer) {
        self.doc.write(w);
        self.actor.write(w);
        w.u64(self.seq).u32(self.epoch);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let doc = DocId::read(r)?;
        let actor = PublicKey::read(r, "actor")?;
        let seq = r.u64("sequence number")?;
        if seq == 0 {
            return Err(DecodeError::invalid("sequence number", "starts at 1"));
        }
        Ok(Self {
            doc,
            actor,
            seq,
            epoch: r.u32("epoch")?,
        })
    }

    fn associated_data(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(AEAD_DOMAIN.len() + HEADER_BYTES);
        w.fixed(AEAD_DOMAIN);
        self.write(&mut w);
        w.finish()
    }
}

/// An encrypted, signed Automerge change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChange {
    header: ChangeHeader,
    nonce: [u8; NONCE_BYTES],
    ciphertext: Vec<u8>,
    signature: Signature,
}

impl SealedChange {
    /// Encrypts `change` (raw Automerge change bytes) under `key` and signs it as `author`.
    pub fn seal(
        header: ChangeHeader,
        change: &[u8],
        key: &DocKey,
        author: &SecretKey,
    ) -> Result<Self, EnvelopeError> {
        if change.len() > MAX_CHANGE_BYTES {
            return Err(EnvelopeError::TooLarge(change.len()));
        }
        let nonce: [u8; NONCE_BYTES] = random_bytes();
        let ciphertext = key.seal(&nonce, change, &header.associated_data())?;
        let mut sealed = Self {
            header,
            nonce,
            ciphertext,
            signature: Signature::from_bytes_unchecked([0; 64]),
        };
        sealed.signature = author.sign(CHANGE_DOMAIN, &sealed.signed_bytes());
        Ok(sealed)
    }

    pub fn header(&self) -> &ChangeHeader {
        &self.header
    }

    /// Bytes of ciphertext (what a relay accounts for quotas).
    pub fn len(&self) -> usize {
        self.ciphertext.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ciphertext.is_empty()
    }

    fn signed_bytes(&self) -> Vec<u8> {
        // Sized for the signature too, so `encode` appends it without reallocating.
        let mut w = Writer::with_capacity(
            1 + HEADER_BYTES + NONCE_BYTES + 4 + self.ciphertext.len() + SIGNATURE_BYTES,
        );
        w.u8(SEALED_CHANGE_VERSION);
        self.header.write(&mut w);
        w.fixed(&self.nonce);
        w.u32(u32::try_from(self.ciphertext.len()).unwrap_or(u32::MAX));
        w.fixed(&self.ciphertext);
        w.finish()
    }

    /// Checks the author's signature: anyone can, with no key.
    pub fn verify(&self) -> Result<(), EnvelopeError> {
        self.header
            .actor
            .verify(CHANGE_DOMAIN, &self.signed_bytes(), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// Decrypts with the epoch's key; the caller has already checked the signature.
    pub fn open(&self, key: &DocKey) -> Result<Vec<u8>, EnvelopeError> {
        key.open(
            &self.nonce,
            &self.ciphertext,
            &self.header.associated_data(),
        )
    }

    pub fn write(&self, w: &mut Writer) {
        w.fixed(&self.signed_bytes());
        self.signature.write(w);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.signed_bytes();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("sealed change", SEALED_CHANGE_VERSION)?;
        let header = ChangeHeader::read(r)?;
        let nonce = r.array("nonce")?;
        let len = usize::try_from(r.u32("ciphertext length")?).unwrap_or(usize::MAX);
        if !(TAG_BYTES..=MAX_CHANGE_BYTES + TAG_BYTES).contains(&len) {
            return Err(DecodeError::TooLong {
                what: "sealed change",
                len,
                max: MAX_CHANGE_BYTES + TAG_BYTES,
            });
        }
        let ciphertext = r.take_bytes("ciphertext", len)?.to_vec();
        let signature = Signature::read(r)?;
        Ok(Self {
            header,
            nonce,
            ciphertext,
            signature,
        })
    }

    /// Decodes one sealed change (does not verify it).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let change = Self::read(&mut r)?;
        r.finish("sealed change")?;
        Ok(change)
    }
}

/// Names one key record: the first 16 bytes of the SHA-256 of its encoding. An epoch's key may be
/// wrapped several times (again for a device that joined later), so records are told apart by
/// content, not by epoch.
pub type KeyId = [u8; 16];

/// One epoch's key, wrapped with age to every device recipient of the user, signed by the device
/// that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub doc: DocId,
    pub epoch: u32,
    pub author: PublicKey,
    wrapped: Vec<u8>,
    signature: Signature,
}

impl KeyRecord {
    /// Wraps `key` to `recipients` (age X25519 `age1…` strings from device certificates).
    pub fn wrap(
        doc: DocId,
        epoch: u32,
        key: &DocKey,
        recipients: &[age::x25519::Recipient],
        author: &SecretKey,
    ) -> Result<Self, EnvelopeError> {
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| EnvelopeError::Age(e.to_string()))?;
        let mut wrapped = Vec::new();
        let mut writer = encryptor
            .wrap_output(&mut wrapped)
            .map_err(|e| EnvelopeError::Age(e.to_string()))?;
        writer
            .write_all(&*key.0)
            .and_then(|()| writer.finish().map(drop))
            .map_err(|e| EnvelopeError::Age(e.to_string()))?;
        let mut record = Self {
            doc,
            epoch,
            author: author.public(),
            wrapped,
            signature: Signature::from_bytes_unchecked([0; 64]),
        };
        record.signature = author.sign(KEY_DOMAIN, &record.signed_bytes());
        Ok(record)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(KEY_RECORD_VERSION);
        self.doc.write(&mut w);
        w.u32(self.epoch);
        self.author.write(&mut w);
        w.u32(u32::try_from(self.wrapped.len()).unwrap_or(u32::MAX));
        w.fixed(&self.wrapped);
        w.finish()
    }

    pub fn verify(&self) -> Result<(), EnvelopeError> {
        self.author
            .verify(KEY_DOMAIN, &self.signed_bytes(), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    pub fn id(&self) -> KeyId {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.encode());
        let mut id = [0u8; 16];
        id.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
        id
    }

    /// Unwraps the key with this device's age identity.
    pub fn unwrap_key(&self, identity: &age::x25519::Identity) -> Result<DocKey, EnvelopeError> {
        let decryptor = age::Decryptor::new_buffered(&self.wrapped[..])
            .map_err(|e| EnvelopeError::Age(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(std::iter::once(identity as &dyn age::Identity))
            .map_err(|_| EnvelopeError::NotARecipient {
                doc: self.doc,
                epoch: self.epoch,
            })?;
        let mut key = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut key)
            .map_err(|_| EnvelopeError::Decrypt)?;
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| EnvelopeError::Decrypt)?;
        Ok(DocKey(Zeroizing::new(key)))
    }

    pub fn write(&self, w: &mut Writer) {
        w.fixed(&self.signed_bytes());
        self.signature.write(w);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.finish()
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("key record", KEY_RECORD_VERSION)?;
        let doc = DocId::read(r)?;
        let epoch = r.u32("epoch")?;
        let author = PublicKey::read(r, "key author")?;
        let len = usize::try_from(r.u32("wrapped key length")?).unwrap_or(usize::MAX);
        if len > MAX_WRAPPED_KEY_BYTES {
            return Err(DecodeError::TooLong {
                what: "wrapped key",
                len,
                max: MAX_WRAPPED_KEY_BYTES,
            });
        }
        let wrapped = r.take_bytes("wrapped key", len)?.to_vec();
        let signature = Signature::read(r)?;
        Ok(Self {
            doc,
            epoch,
            author,
            wrapped,
            signature,
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let record = Self::read(&mut r)?;
        r.finish("key record")?;
        Ok(record)
    }
}

/// The age recipients of the devices whose certificates are given: who a document key is wrapped
/// to. Certificates without a recipient (users, relays, GPU peers) are skipped; a device
/// certificate's recipient was checked when the certificate was decoded.
pub fn device_recipients<'a>(
    certs: impl IntoIterator<Item = &'a jarvis_identity::Certificate>,
) -> Vec<age::x25519::Recipient> {
    certs
        .into_iter()
        .filter_map(|c| c.age_recipient())
        .filter_map(|r| r.parse().ok())
        .collect()
}

/// The epoch keys a device holds for one document.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<u32, DocKey>,
}

impl Keyring {
    pub fn insert(&mut self, epoch: u32, key: DocKey) {
        self.keys.insert(epoch, key);
    }

    pub fn get(&self, epoch: u32) -> Option<&DocKey> {
        self.keys.get(&epoch)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &DocKey)> {
        self.keys.iter().map(|(e, k)| (*e, k))
    }

    /// The newest epoch and its key: what new changes are sealed with.
    pub fn current(&self) -> Option<(u32, &DocKey)> {
        self.keys.iter().next_back().map(|(e, k)| (*e, k))
    }
}

/// An encrypted compacted document covering `vector`: a new device loads one snapshot plus the
/// changes after it instead of the whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSnapshot {
    pub doc: DocId,
    pub epoch: u32,
    pub vector: VersionVector,
    pub author: PublicKey,
    nonce: [u8; NONCE_BYTES],
    ciphertext: Vec<u8>,
    signature: Signature,
}

impl SealedSnapshot {
    pub fn seal(
        doc: DocId,
        epoch: u32,
        vector: VersionVector,
        saved: &[u8],
        key: &DocKey,
        author: &SecretKey,
    ) -> Result<Self, EnvelopeError> {
        if saved.len() > MAX_SNAPSHOT_BYTES {
            return Err(EnvelopeError::TooLarge(saved.len()));
        }
        let mut snapshot = Self {
            doc,
            epoch,
            vector,
            author: author.public(),
            nonce: random_bytes(),
            ciphertext: Vec::new(),
            signature: Signature::from_bytes_unchecked([0; 64]),
        };
        snapshot.ciphertext = key.seal(&snapshot.nonce, saved, &snapshot.associated_data())?;
        snapshot.signature = author.sign(SNAPSHOT_DOMAIN, &snapshot.signed_bytes());
        Ok(snapshot)
    }

    fn associated_data(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.fixed(SNAPSHOT_DOMAIN);
        self.doc.write(&mut w);
        w.u32(self.epoch);
        self.vector.write(&mut w);
        self.author.write(&mut w);
        w.finish()
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(SNAPSHOT_VERSION);
        self.doc.write(&mut w);
        w.u32(self.epoch);
        self.vector.write(&mut w);
        self.author.write(&mut w);
        w.fixed(&self.nonce);
        w.u32(u32::try_from(self.ciphertext.len()).unwrap_or(u32::MAX));
        w.fixed(&self.ciphertext);
        w.finish()
    }

    pub fn verify(&self) -> Result<(), EnvelopeError> {
        self.author
            .verify(SNAPSHOT_DOMAIN, &self.signed_bytes(), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    pub fn open(&self, key: &DocKey) -> Result<Vec<u8>, EnvelopeError> {
        key.open(&self.nonce, &self.ciphertext, &self.associated_data())
    }

    pub fn len(&self) -> usize {
        self.ciphertext.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ciphertext.is_empty()
    }

    pub fn write(&self, w: &mut Writer) {
        w.fixed(&self.signed_bytes());
        self.signature.write(w);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.finish()
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("snapshot", SNAPSHOT_VERSION)?;
        let doc = DocId::read(r)?;
        let epoch = r.u32("epoch")?;
        let vector = VersionVector::read(r)?;
        let author = PublicKey::read(r, "snapshot author")?;
        let nonce = r.array("nonce")?;
        let len = usize::try_from(r.u32("snapshot length")?).unwrap_or(usize::MAX);
        if !(TAG_BYTES..=MAX_SNAPSHOT_BYTES + TAG_BYTES).contains(&len) {
            return Err(DecodeError::TooLong {
                what: "snapshot",
                len,
                max: MAX_SNAPSHOT_BYTES + TAG_BYTES,
            });
        }
        let ciphertext = r.take_bytes("snapshot", len)?.to_vec();
        let signature = Signature::read(r)?;
        Ok(Self {
            doc,
            epoch,
            vector,
            author,
            nonce,
            ciphertext,
            signature,
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let snapshot = Self::read(&mut r)?;
        r.finish("snapshot")?;
        Ok(snapshot)
    }
}
