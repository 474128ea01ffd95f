//! Revocation: a grow-only set of signed records.
//!
//! The membership state is "certificates minus revocations". Records are only ever added, and
//! the set is keyed by the hash of each record's canonical encoding, so merging two sets is set
//! union: commutative, associative and idempotent. Any two peers that have seen the same records
//! agree on who is revoked, whatever order the records arrived in and however the network was
//! partitioned in between. Two peers compare sets cheaply with [`RevocationSet::digest`].
//!
//! A record is valid when it is signed by the org root or by an admin whose chain verifies to the
//! root *at the time the record names*. Whether that admin was revoked later is deliberately not
//! consulted: doing so would make validity depend on other records and break the simple union
//! semantics (and an admin revoking an admin revoking them back would have no stable answer).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::cert::{CertChain, CertKind, Certificate, ChainError, Roles, Verified};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::keys::{Name, PublicKey, SecretKey, Signature, UnixTime, domain};

const RECORD_VERSION: u8 = 1;
const SET_VERSION: u8 = 1;
pub const MAX_REASON_BYTES: usize = 256;
/// Enough for an org of 100,000 people each revoking a few devices; a set larger than this is
/// refused rather than allocated.
pub const MAX_RECORDS: usize = 1_000_000;

/// What a revocation takes away.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RevocationTarget {
    /// One key: a device, relay, GPU peer, admin, or one user key.
    Key(PublicKey),
    /// Every user certificate with this name, and so every device of that user.
    User(Name),
}

impl std::fmt::Display for RevocationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(key) => write!(f, "key {key}"),
            Self::User(name) => write!(f, "user `{name}`"),
        }
    }
}

impl RevocationTarget {
    pub(crate) fn write(&self, w: &mut Writer) {
        match self {
            Self::Key(key) => {
                w.u8(1);
                key.write(w);
            }
            Self::User(name) => {
                w.u8(2);
                name.write(w);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("revocation target")? {
            1 => Ok(Self::Key(PublicKey::read(r, "revoked key")?)),
            2 => Ok(Self::User(Name::read(r)?)),
            other => Err(DecodeError::invalid(
                "revocation target",
                format!("tag {other}"),
            )),
        }
    }
}

/// One signed revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    target: RevocationTarget,
    reason: String,
    revoked_at: UnixTime,
    /// The signer's chain; empty when the org root signed.
    chain: CertChain,
    signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RevocationError {
    #[error("the revocation's reason is {0} bytes, more than the {MAX_REASON_BYTES} allowed")]
    ReasonTooLong(usize),
    #[error("the revocation was not signed by an admin of this org: {0}")]
    BadChain(#[from] ChainError),
    #[error("the revocation was signed by {0}, which is not an admin")]
    NotAdmin(String),
    #[error("the revocation's signature does not verify: it was altered or forged")]
    BadSignature,
    #[error("the revocation set belongs to another org (root {found}, expected {expected})")]
    OtherOrg {
        expected: PublicKey,
        found: PublicKey,
    },
    #[error("the revocation set holds more than {MAX_RECORDS} records")]
    TooMany,
}

impl Revocation {
    /// Signs a revocation of `target`. `chain` is the signer's chain (its leaf's key must be
    /// `signer`); pass `None` when the org root signs.
    pub fn issue(
        target: RevocationTarget,
        reason: &str,
        revoked_at: UnixTime,
        chain: Option<&CertChain>,
        signer: &SecretKey,
    ) -> Result<Self, RevocationError> {
        if reason.len() > MAX_REASON_BYTES {
            return Err(RevocationError::ReasonTooLong(reason.len()));
        }
        let mut record = Self {
            target,
            reason: reason.to_owned(),
            revoked_at,
            chain: chain.cloned().unwrap_or_else(CertChain::root_signed),
            signature: Signature::from_bytes_unchecked([0; 64]),
        };
        record.signature = signer.sign(domain::REVOCATION, &record.to_be_signed());
        Ok(record)
    }

    pub fn target(&self) -> &RevocationTarget {
        &self.target
    }
    pub fn reason(&self) -> &str {
        &self.reason
    }
    pub fn revoked_at(&self) -> UnixTime {
        self.revoked_at
    }

    /// "revoked at 2026-…: lost laptop".
    pub fn describe(&self) -> String {
        if self.reason.is_empty() {
            format!("revoked at {}", self.revoked_at)
        } else {
            format!("revoked at {}: {}", self.revoked_at, self.reason)
        }
    }

    fn write_tbs(&self, w: &mut Writer) {
        w.u8(RECORD_VERSION);
        self.target.write(w);
        w.str(&self.reason).u64(self.revoked_at.0);
        self.chain.write(w);
    }

    fn to_be_signed(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write_tbs(&mut w);
        w.finish()
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        self.write_tbs(w);
        self.signature.write(w);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.finish()
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("revocation", RECORD_VERSION)?;
        let target = RevocationTarget::read(r)?;
        let reason = r.str("revocation reason", MAX_REASON_BYTES)?.to_owned();
        let revoked_at = UnixTime(r.u64("revocation time")?);
        let chain = CertChain::read(r)?;
        let signature = Signature::read(r)?;
        Ok(Self {
            target,
            reason,
            revoked_at,
            chain,
            signature,
        })
    }

    /// Decodes one record without verifying it ([`RevocationSet::insert`] verifies).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let record = Self::read(&mut r)?;
        r.finish("revocation")?;
        Ok(record)
    }

    /// The record's id: the SHA-256 of its canonical encoding.
    pub fn id(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Checks that an admin of the org with root `root` signed this record.
    pub fn verify(&self, root: &PublicKey) -> Result<(), RevocationError> {
        let signer = if self.chain.certs().is_empty() {
            *root
        } else {
            let verified = self.chain.verify_structure(root, Some(self.revoked_at))?;
            let admin = matches!(verified.kind, CertKind::Admin | CertKind::User)
                && verified.roles.contains(Roles::ADMIN);
            if !admin {
                let leaf = self
                    .chain
                    .leaf()
                    .map(Certificate::describe)
                    .unwrap_or_default();
                return Err(RevocationError::NotAdmin(leaf));
            }
            verified.subject
        };
        signer
            .verify(domain::REVOCATION, &self.to_be_signed(), &self.signature)
            .map_err(|_| RevocationError::BadSignature)
    }
}

/// The org's verified revocations. See the module documentation for the merge semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSet {
    root: PublicKey,
    records: BTreeMap<[u8; 32], Revocation>,
    /// Indexes into `records`, so checking a certificate is two map look-ups. Derived state: the
    /// earliest record (by id order) is kept, so both indexes are functions of the record set.
    by_key: BTreeMap<PublicKey, [u8; 32]>,
    by_user: BTreeMap<Name, [u8; 32]>,
}

impl RevocationSet {
    pub fn new(root: PublicKey) -> Self {
        Self {
            root,
            records: BTreeMap::new(),
            by_key: BTreeMap::new(),
            by_user: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> PublicKey {
        self.root
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Revocation> {
        self.records.values()
    }

    /// Verifies and adds a record; returns whether it was new.
    pub fn insert(&mut self, record: Revocation) -> Result<bool, RevocationError> {
        record.verify(&self.root)?;
        Ok(self.insert_verified(record))
    }

    fn insert_verified(&mut self, record: Revocation) -> bool {
        let id = record.id();
        if self.records.contains_key(&id) {
            return false;
        }
        match &record.target {
            RevocationTarget::Key(key) => {
                let slot = self.by_key.entry(*key).or_insert(id);
                *slot = (*slot).min(id);
            }
            RevocationTarget::User(name) => {
                let slot = self.by_user.entry(name.clone()).or_insert(id);
                *slot = (*slot).min(id);
            }
        }
        self.records.insert(id, record);
        true
    }

    /// Adds every record of `other`. Both sets hold only verified records of their root, so
    /// nothing is re-verified; sets of different orgs do not merge.
    pub fn merge(&mut self, other: &Self) -> Result<usize, RevocationError> {
        if other.root != self.root {
            return Err(RevocationError::OtherOrg {
                expected: self.root,
                found: other.root,
            });
        }
        if self.records.len() + other.records.len() > MAX_RECORDS {
            let union = other
                .records
                .keys()
                .filter(|id| !self.records.contains_key(*id))
                .count();
            if self.records.len() + union > MAX_RECORDS {
                return Err(RevocationError::TooMany);
            }
        }
        Ok(other
            .records
            .values()
            .filter(|record| self.insert_verified((*record).clone()))
            .count())
    }

    /// The record that revokes `cert`, if any: one naming its key, or for a user certificate one
    /// naming its user.
    pub fn revocation_for(&self, cert: &Certificate) -> Option<&Revocation> {
        let by_key = self.by_key.get(&cert.subject());
        let by_user = match cert.kind() {
            CertKind::User => self.by_user.get(cert.name()),
            _ => None,
        };
        by_key.or(by_user).and_then(|id| self.records.get(id))
    }

    pub fn is_key_revoked(&self, key: &PublicKey) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn is_user_revoked(&self, name: &Name) -> bool {
        self.by_user.contains_key(name)
    }

    /// SHA-256 over the sorted record ids: equal digests mean equal sets.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"jarvis/revocation-set/v1\0");
        for id in self.records.keys() {
            hasher.update(id);
        }
        hasher.finalize().into()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(SET_VERSION);
        self.root.write(&mut w);
        w.u32(u32::try_from(self.records.len()).unwrap_or(u32::MAX));
        for record in self.records.values() {
            record.write(&mut w);
        }
        w.finish()
    }

    /// Decodes and verifies a set. A set of another org, or any record that does not verify,
    /// fails the whole decode: a store that holds a forged record has been tampered with.
    pub fn decode(root: &PublicKey, bytes: &[u8]) -> Result<Self, RevocationSetError> {
        let mut r = Reader::new(bytes);
        r.version("revocation set", SET_VERSION)?;
        let found = PublicKey::read(&mut r, "revocation set root")?;
        if found != *root {
            return Err(RevocationError::OtherOrg {
                expected: *root,
                found,
            }
            .into());
        }
        let count = usize::try_from(r.u32("revocation count")?).unwrap_or(usize::MAX);
        if count > MAX_RECORDS {
            return Err(RevocationError::TooMany.into());
        }
        let mut set = Self::new(*root);
        for _ in 0..count {
            set.insert(Revocation::read(&mut r)?)?;
        }
        r.finish("revocation set")?;
        Ok(set)
    }
}

/// Why stored or received revocation-set bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RevocationSetError {
    #[error("malformed revocation set: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Record(#[from] RevocationError),
}

/// Verifying a chain with the revocations: here rather than in `cert`, so that certificates do
/// not depend on the revocations that refer to them.
impl CertChain {
    /// Verifies the whole chain against the org `root` at time `now`, refusing any certificate
    /// the revocation set covers.
    pub fn verify(
        &self,
        root: &PublicKey,
        now: UnixTime,
        revocations: &RevocationSet,
    ) -> Result<Verified, ChainError> {
        let verified = self.verify_structure(root, Some(now))?;
        for cert in self.certs() {
            if let Some(record) = revocations.revocation_for(cert) {
                return Err(ChainError::Revoked {
                    cert: cert.describe(),
                    reason: record.describe(),
                });
            }
        }
        Ok(verified)
    }
}
