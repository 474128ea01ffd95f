//! Revocation: a grow-only set of signed records.
//!
//! The membership state is "certificates minus revocations". Records are only ever added, and
//! the set is keyed by the hash of each record's canonical encoding, so merging two sets is set
//! union: commutative, associative and idempotent. Any two peers that have seen the same records
//! agree on who is revoked, whatever order the records arrived in and however the network was
//! partitioned in between. Two peers compare sets cheaply with [`RevocationSet::digest`].
//!
//! A record is well formed when it is signed by the org root or by an admin whose chain verifies
//! to the root *at the time the record names*. Which stored records are *in force* is a function
//! of the whole set (so every peer holding the same records agrees):
//!
//! - a record the org root cancelled ([`RevocationTarget::Record`], root-signed only) is not;
//! - records are taken in order of their time (then id); one whose signer, or any certificate
//!   above the signer, is already revoked by a record in force is not. A fired admin's records
//!   dated after the firing count for nothing, and two admins revoking each other have a stable
//!   answer: the earlier record wins.
//!
//! A record first heard from a peer ([`RevocationSet::merge_received`]) must also be good *now*:
//! not dated in the future, its signer's chain valid now and not revoked by what we (or the same
//! message) know. A fired or expired admin who back-dates a record gets it nowhere that already
//! knows of the firing; where it got in first, the root cancels it. The cost, written down: a
//! record signed by an admin who is since revoked or expired is not taken from peers that first
//! hear of it afterwards. Today every record is signed by the org root or by the one admin key
//! of the workstation that ran `jarvis admin init` (valid ten years), so nothing is lost; an org
//! with several admin workstations must have their records signed again before firing one.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::cert::{CLOCK_SKEW_SECS, CertChain, CertKind, Certificate, ChainError, Roles, Verified};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::keys::{Name, PublicKey, SecretKey, Serial, Signature, UnixTime, domain};

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
    /// Cancels the record with this id (a wrongful or forged revocation). Only the org root
    /// signs these, and they cannot themselves be cancelled.
    Record([u8; 32]),
    /// The invite with this serial was claimed by this user key: every *other* user made with
    /// that invite is revoked. An admin signs it once a relay reports the first claim, so a
    /// second claimant is refused by every device, not only by relays that saw both.
    Claim { invite: Serial, user_key: PublicKey },
}

impl std::fmt::Display for RevocationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(key) => write!(f, "key {key}"),
            Self::User(name) => write!(f, "user `{name}`"),
            Self::Record(id) => write!(f, "revocation {}", hex::encode(id)),
            Self::Claim { invite, user_key } => {
                write!(f, "users of invite {invite} other than {user_key}")
            }
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
            Self::Record(id) => {
                w.u8(3);
                w.fixed(id);
            }
            Self::Claim { invite, user_key } => {
                w.u8(4);
                w.fixed(&invite.0);
                user_key.write(w);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("revocation target")? {
            1 => Ok(Self::Key(PublicKey::read(r, "revoked key")?)),
            2 => Ok(Self::User(Name::read(r)?)),
            3 => Ok(Self::Record(r.array("cancelled revocation id")?)),
            4 => Ok(Self::Claim {
                invite: Serial(r.array("claimed invite serial")?),
                user_key: PublicKey::read(r, "claiming user key")?,
            }),
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
    #[error("only the org root can cancel a revocation")]
    CancelNotByRoot,
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
    /// Who signed it: `None` for the org root, else the leaf key of the signer's chain.
    pub fn signer(&self) -> Option<PublicKey> {
        self.chain.leaf().map(Certificate::subject)
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
        if matches!(self.target, RevocationTarget::Record(_)) && !self.chain.certs().is_empty() {
            return Err(RevocationError::CancelNotByRoot);
        }
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

/// The org's verified revocations. See the module documentation for the merge semantics and
/// which records are in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSet {
    root: PublicKey,
    records: BTreeMap<[u8; 32], Revocation>,
    /// Indexes of the records *in force* into `records`, so checking a certificate is two map
    /// look-ups. Derived state ([`Self::reindex`]): a function of the record set alone.
    by_key: BTreeMap<PublicKey, [u8; 32]>,
    by_user: BTreeMap<Name, [u8; 32]>,
    /// Claimed invites: the one user key each may certify, and the record saying so.
    by_invite: BTreeMap<Serial, (PublicKey, [u8; 32])>,
    /// Stored records not in force: cancelled by the root, or signed by a revoked signer.
    ignored: usize,
}

impl RevocationSet {
    pub fn new(root: PublicKey) -> Self {
        Self {
            root,
            records: BTreeMap::new(),
            by_key: BTreeMap::new(),
            by_user: BTreeMap::new(),
            by_invite: BTreeMap::new(),
            ignored: 0,
        }
    }

    pub fn root(&self) -> PublicKey {
        self.root
    }

    /// Records held, in force or not (what the digest and the encoding cover).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records held but not in force: cancelled by the org root, or signed by a key that was
    /// revoked before the record's time.
    pub fn ignored(&self) -> usize {
        self.ignored
    }

    pub fn iter(&self) -> impl Iterator<Item = &Revocation> {
        self.records.values()
    }

    /// Is this record in force (held, not cancelled, and its signer not revoked before it)?
    pub fn in_force(&self, record: &Revocation) -> bool {
        let id = record.id();
        match &record.target {
            RevocationTarget::Key(key) => self.by_key.get(key) == Some(&id),
            RevocationTarget::User(name) => self.by_user.get(name) == Some(&id),
            RevocationTarget::Record(_) => self.records.contains_key(&id),
            RevocationTarget::Claim { invite, .. } => {
                self.by_invite.get(invite).map(|(_, held)| held) == Some(&id)
            }
        }
    }

    /// The user key that claimed `invite`, if an admin has said so.
    pub fn claim_of(&self, invite: Serial) -> Option<PublicKey> {
        self.by_invite.get(&invite).map(|(key, _)| *key)
    }

    /// Verifies and adds a record that this device made or was handed by its own admin; returns
    /// whether it was new. Records from peers go through [`Self::merge_received`].
    pub fn insert(&mut self, record: Revocation) -> Result<bool, RevocationError> {
        record.verify(&self.root)?;
        let new = self.insert_verified(record);
        if new {
            self.reindex();
        }
        Ok(new)
    }

    /// Adds a verified record without re-deriving the indexes ([`Self::reindex`] must follow).
    fn insert_verified(&mut self, record: Revocation) -> bool {
        let id = record.id();
        if self.records.contains_key(&id) {
            return false;
        }
        self.records.insert(id, record);
        true
    }

    /// Re-derives which records are in force: leave out what the root cancelled, then take the
    /// records in order of (time, id) and skip any whose signer chain holds a certificate that a
    /// record already taken revokes.
    fn reindex(&mut self) {
        let cancelled: BTreeSet<[u8; 32]> = self
            .records
            .values()
            .filter_map(|record| match record.target {
                RevocationTarget::Record(id) => Some(id),
                _ => None,
            })
            .collect();
        let mut order: Vec<(&[u8; 32], &Revocation)> = self
            .records
            .iter()
            .filter(|(id, record)| {
                !matches!(record.target, RevocationTarget::Record(_)) && !cancelled.contains(*id)
            })
            .collect();
        order.sort_by_key(|(id, record)| (record.revoked_at, **id));
        let mut by_key = BTreeMap::new();
        let mut by_user = BTreeMap::new();
        let mut by_invite = BTreeMap::new();
        let mut ignored = self.records.len() - order.len() - cancelled_records(&self.records);
        for (id, record) in order {
            let signer_revoked = record
                .chain
                .certs()
                .iter()
                .any(|cert| covers(&by_key, &by_user, cert));
            if signer_revoked {
                ignored += 1;
                continue;
            }
            match &record.target {
                RevocationTarget::Key(key) => {
                    by_key.entry(*key).or_insert(*id);
                }
                RevocationTarget::User(name) => {
                    by_user.entry(name.clone()).or_insert(*id);
                }
                RevocationTarget::Claim { invite, user_key } => {
                    by_invite.entry(*invite).or_insert((*user_key, *id));
                }
                RevocationTarget::Record(_) => {}
            }
        }
        self.by_key = by_key;
        self.by_user = by_user;
        self.by_invite = by_invite;
        self.ignored = ignored;
    }

    /// Adds every record of `other`, a set this device already trusts (its own, or one whose
    /// records were all checked by [`Self::merge_received`]); sets of different orgs do not merge.
    pub fn merge(&mut self, other: &Self) -> Result<usize, RevocationError> {
        let fresh = self.fresh_from(other)?;
        let added = fresh
            .into_iter()
            .filter(|record| self.insert_verified((*record).clone()))
            .count();
        if added > 0 {
            self.reindex();
        }
        Ok(added)
    }

    /// Adds the records of `other` that a peer sent, keeping only those good at `now`: not dated
    /// in the future, signed by the root or by an admin whose chain is valid now and not revoked
    /// by anything we know or the peer sent. Returns how many were added; what was left out is
    /// not stored, so it is not passed on either.
    pub fn merge_received(
        &mut self,
        other: &Self,
        now: UnixTime,
    ) -> Result<usize, RevocationError> {
        let fresh = self.fresh_from(other)?;
        if fresh.is_empty() {
            return Ok(0);
        }
        // Judge each signer against everything known, the peer's records included: a set that
        // carries both an admin's firing and that admin's back-dated records yields the firing.
        let mut union = self.clone();
        for record in &fresh {
            union.insert_verified((*record).clone());
        }
        union.reindex();
        let latest = now.saturating_add_secs(CLOCK_SKEW_SECS);
        let root = self.root;
        let good: Vec<&Revocation> = fresh
            .into_iter()
            .filter(|record| record.revoked_at <= latest)
            .filter(|record| {
                let chain = &record.chain;
                chain.certs().is_empty()
                    || (chain.verify_structure(&root, Some(now)).is_ok()
                        && !chain
                            .certs()
                            .iter()
                            .any(|cert| covers(&union.by_key, &union.by_user, cert)))
            })
            .collect();
        let added = good
            .into_iter()
            .filter(|record| self.insert_verified((*record).clone()))
            .count();
        if added > 0 {
            self.reindex();
        }
        Ok(added)
    }

    /// The records of `other` this set does not hold, after the org and size checks.
    fn fresh_from<'a>(&self, other: &'a Self) -> Result<Vec<&'a Revocation>, RevocationError> {
        if other.root != self.root {
            return Err(RevocationError::OtherOrg {
                expected: self.root,
                found: other.root,
            });
        }
        let fresh: Vec<&Revocation> = other
            .records
            .iter()
            .filter(|(id, _)| !self.records.contains_key(*id))
            .map(|(_, record)| record)
            .collect();
        if self.records.len() + fresh.len() > MAX_RECORDS {
            return Err(RevocationError::TooMany);
        }
        Ok(fresh)
    }

    /// The record in force that revokes `cert`, if any: one naming its key, or for a user
    /// certificate one naming its user.
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
        let mut set = Self::decode_skipping(root, bytes, |_| false)?;
        set.reindex();
        Ok(set)
    }

    /// A set a peer sent (encoded), merged as [`Self::merge_received`] does. Only the records this
    /// set does not hold are verified (and kept for the merge): a peer's set is mostly ours, and
    /// its signatures are not checked again at every exchange. Any record that does not verify
    /// refuses the whole set, as [`Self::decode`] does.
    pub fn merge_received_bytes(
        &mut self,
        bytes: &[u8],
        now: UnixTime,
    ) -> Result<usize, RevocationSetError> {
        let theirs = Self::decode_skipping(&self.root, bytes, |id| self.records.contains_key(id))?;
        Ok(self.merge_received(&theirs, now)?)
    }

    /// Decodes a set, verifying and keeping each record except those `skip` names (by id). The
    /// indexes are not derived: the caller reindexes, or only reads `records`.
    fn decode_skipping(
        root: &PublicKey,
        bytes: &[u8],
        skip: impl Fn(&[u8; 32]) -> bool,
    ) -> Result<Self, RevocationSetError> {
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
            let record = Revocation::read(&mut r)?;
            let id = record.id();
            if skip(&id) {
                continue;
            }
            record.verify(root)?;
            set.records.entry(id).or_insert(record);
        }
        r.finish("revocation set")?;
        Ok(set)
    }
}

/// Does a record in force (by these indexes) revoke `cert`?
fn covers(
    by_key: &BTreeMap<PublicKey, [u8; 32]>,
    by_user: &BTreeMap<Name, [u8; 32]>,
    cert: &Certificate,
) -> bool {
    by_key.contains_key(&cert.subject())
        || (cert.kind() == CertKind::User && by_user.contains_key(cert.name()))
}

/// How many records are cancellations (never "ignored": they are in force by being held).
fn cancelled_records(records: &BTreeMap<[u8; 32], Revocation>) -> usize {
    records
        .values()
        .filter(|record| matches!(record.target, RevocationTarget::Record(_)))
        .count()
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
        let mut parent: Option<&Certificate> = None;
        for cert in self.certs() {
            if let Some(record) = revocations.revocation_for(cert) {
                return Err(ChainError::Revoked {
                    cert: cert.describe(),
                    reason: record.describe(),
                });
            }
            if let Some(invite) = parent.filter(|p| p.kind() == CertKind::Invite)
                && let Some(owner) = revocations.claim_of(invite.serial())
                && owner != cert.subject()
            {
                return Err(ChainError::Revoked {
                    cert: cert.describe(),
                    reason: format!(
                        "invite {} was claimed by another user key ({owner}); ask an admin for a new invite",
                        invite.serial()
                    ),
                });
            }
            parent = Some(cert);
        }
        Ok(verified)
    }
}
