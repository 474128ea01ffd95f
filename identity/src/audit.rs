//! The org's audit log: every admin action, signed by the admin who took it and hash-chained to
//! the entry before it, so the org can replay the log and verify it end to end.
//!
//! Entry 0 is signed by the org root and names the first admin's certificate; every later entry is
//! signed by the root or by an admin the log has introduced. Each entry carries the SHA-256 of the
//! previous entry's encoding, so changing, removing or reordering any entry breaks the chain from
//! there on. The log is stored as frames (`u32` length, entry); the caller keeps the head
//! (sequence number and hash) elsewhere to detect a truncated tail.

use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::cert::{CertChain, CertKind, Certificate, Roles};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::keys::{Name, PublicKey, SecretKey, Serial, Signature, UnixTime, domain};
use crate::revocation::{MAX_REASON_BYTES, RevocationTarget};

const ENTRY_VERSION: u8 = 1;
/// No action needs more than a certificate and a few names.
pub const MAX_ENTRY_BYTES: usize = 4096;

/// One admin action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditAction {
    /// The org was created; `admin` is the first admin's root-signed certificate.
    OrgCreated {
        org: Name,
        admin: Certificate,
    },
    Invited {
        user: Name,
        roles: Roles,
        invite: Serial,
        expires_at: UnixTime,
    },
    Enrolled {
        kind: CertKind,
        name: Name,
        peer: PublicKey,
        serial: Serial,
    },
    Revoked {
        target: RevocationTarget,
        reason: String,
    },
    RelayAdded {
        address: String,
    },
    /// A relay reported a device presenting a chain made with an invite: the first user key to
    /// do so claims the invite (`accepted`); any other user key presenting it later is refused
    /// by the relay, and recorded here too so the admin sees the token was used twice.
    InviteClaimed {
        invite: Serial,
        user: Name,
        user_key: PublicKey,
        device: PublicKey,
        device_name: Name,
        accepted: bool,
        /// The relay that saw it.
        relay: String,
    },
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OrgCreated { org, admin } => {
                write!(f, "created org `{org}` with admin {}", admin.subject())
            }
            Self::Invited {
                user,
                roles,
                expires_at,
                ..
            } => write!(
                f,
                "invited user `{user}` as {} (invite expires {expires_at})",
                roles.names().join("+")
            ),
            Self::Enrolled {
                kind, name, peer, ..
            } => write!(f, "enrolled {kind} `{name}` ({peer})"),
            Self::Revoked {
                target: RevocationTarget::Record(id),
                reason,
            } => write!(f, "cancelled revocation {}: {reason}", hex::encode(id)),
            Self::Revoked { target, reason } if reason.is_empty() => write!(f, "revoked {target}"),
            Self::Revoked { target, reason } => write!(f, "revoked {target}: {reason}"),
            Self::RelayAdded { address } => write!(f, "added relay {address}"),
            Self::InviteClaimed {
                invite,
                user,
                user_key,
                device,
                device_name,
                accepted,
                relay,
            } => {
                if *accepted {
                    write!(
                        f,
                        "invite {invite} claimed by user `{user}` ({user_key}) from device `{device_name}` ({device}), seen by relay {relay}"
                    )
                } else {
                    write!(
                        f,
                        "invite {invite} claimed a second time, by another user key ({user_key}, calling itself `{user}`) from device `{device_name}` ({device}): refused by relay {relay}"
                    )
                }
            }
        }
    }
}

impl AuditAction {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OrgCreated { .. } => "org-created",
            Self::Invited { .. } => "invited",
            Self::Enrolled { .. } => "enrolled",
            Self::Revoked { .. } => "revoked",
            Self::RelayAdded { .. } => "relay-added",
            Self::InviteClaimed { accepted: true, .. } => "invite-claimed",
            Self::InviteClaimed {
                accepted: false, ..
            } => "invite-claim-refused",
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Self::OrgCreated { org, admin } => {
                w.u8(1);
                org.write(w);
                admin.write(w);
            }
            Self::Invited {
                user,
                roles,
                invite,
                expires_at,
            } => {
                w.u8(2);
                user.write(w);
                w.u8(roles.bits()).fixed(&invite.0).u64(expires_at.0);
            }
            Self::Enrolled {
                kind,
                name,
                peer,
                serial,
            } => {
                w.u8(3).u8(match kind {
                    CertKind::Relay => 1,
                    CertKind::Gpu => 2,
                    _ => 0,
                });
                name.write(w);
                peer.write(w);
                w.fixed(&serial.0);
            }
            Self::Revoked { target, reason } => {
                w.u8(4);
                target.write(w);
                w.str(reason);
            }
            Self::RelayAdded { address } => {
                w.u8(5).str(address);
            }
            Self::InviteClaimed {
                invite,
                user,
                user_key,
                device,
                device_name,
                accepted,
                relay,
            } => {
                w.u8(6).fixed(&invite.0);
                user.write(w);
                user_key.write(w);
                device.write(w);
                device_name.write(w);
                w.u8(u8::from(*accepted)).str(relay);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("audit action")? {
            1 => Self::OrgCreated {
                org: Name::read(r)?,
                admin: Certificate::read(r)?,
            },
            2 => Self::Invited {
                user: Name::read(r)?,
                roles: Roles::from_bits(r.u8("roles")?)?,
                invite: Serial(r.array("invite serial")?),
                expires_at: UnixTime(r.u64("invite expiry")?),
            },
            3 => Self::Enrolled {
                kind: match r.u8("enrolled kind")? {
                    1 => CertKind::Relay,
                    2 => CertKind::Gpu,
                    other => {
                        return Err(DecodeError::invalid("enrolled kind", format!("{other}")));
                    }
                },
                name: Name::read(r)?,
                peer: PublicKey::read(r, "enrolled peer")?,
                serial: Serial(r.array("serial")?),
            },
            4 => Self::Revoked {
                target: RevocationTarget::read(r)?,
                reason: r.str("reason", MAX_REASON_BYTES)?.to_owned(),
            },
            5 => Self::RelayAdded {
                address: r
                    .str("relay address", crate::enrol::MAX_RELAY_ADDR_BYTES)?
                    .to_owned(),
            },
            6 => Self::InviteClaimed {
                invite: Serial(r.array("invite serial")?),
                user: Name::read(r)?,
                user_key: PublicKey::read(r, "claiming user key")?,
                device: PublicKey::read(r, "claiming device")?,
                device_name: Name::read(r)?,
                accepted: match r.u8("claim accepted")? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(DecodeError::invalid("claim accepted", format!("{other}")));
                    }
                },
                relay: r
                    .str("relay address", crate::enrol::MAX_RELAY_ADDR_BYTES)?
                    .to_owned(),
            },
            other => return Err(DecodeError::invalid("audit action", format!("tag {other}"))),
        })
    }
}

/// One signed, hash-chained entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    seq: u64,
    prev_hash: [u8; 32],
    at: UnixTime,
    actor: PublicKey,
    action: AuditAction,
    signature: Signature,
}

impl AuditEntry {
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn at(&self) -> UnixTime {
        self.at
    }
    pub fn actor(&self) -> PublicKey {
        self.actor
    }
    pub fn action(&self) -> &AuditAction {
        &self.action
    }

    fn to_be_signed(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(ENTRY_VERSION)
            .u64(self.seq)
            .fixed(&self.prev_hash)
            .u64(self.at.0);
        self.actor.write(&mut w);
        self.action.write(&mut w);
        w.finish()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.to_be_signed();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("audit entry", ENTRY_VERSION)?;
        let seq = r.u64("sequence number")?;
        let prev_hash = r.array("previous hash")?;
        let at = UnixTime(r.u64("time")?);
        let actor = PublicKey::read(&mut r, "actor")?;
        let action = AuditAction::read(&mut r)?;
        let signature = Signature::read(&mut r)?;
        r.finish("audit entry")?;
        Ok(Self {
            seq,
            prev_hash,
            at,
            actor,
            action,
            signature,
        })
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The entry as stored: a `u32` big-endian length, then the entry.
    pub fn frame(&self) -> Vec<u8> {
        let body = self.encode();
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuditError {
    #[error("audit entry {seq}: {reason}")]
    Entry { seq: u64, reason: String },
    #[error(
        "{0} is not an admin this log knows; only the org root and admins it introduced may append"
    )]
    UnknownActor(PublicKey),
    #[error("the first entry must create the org")]
    NoOrigin,
    #[error(
        "the log ends at entry {found} but its recorded head is entry {expected}: entries were removed"
    )]
    Truncated { expected: u64, found: u64 },
}

fn entry_error(seq: u64, reason: impl Into<String>) -> AuditError {
    AuditError::Entry {
        seq,
        reason: reason.into(),
    }
}

/// A verified audit log, in memory.
#[derive(Debug, Clone)]
pub struct AuditLog {
    root: PublicKey,
    entries: Vec<AuditEntry>,
    admins: BTreeSet<PublicKey>,
}

impl AuditLog {
    pub fn new(root: PublicKey) -> Self {
        Self {
            root,
            entries: Vec::new(),
            admins: BTreeSet::new(),
        }
    }

    pub fn entries(&self) -> &[AuditEntry] {
        &self.entries
    }

    /// Sequence number and hash of the last entry.
    pub fn head(&self) -> Option<(u64, [u8; 32])> {
        self.entries.last().map(|e| (e.seq, e.hash()))
    }

    /// Signs and appends an action; returns the new entry so the caller can store its frame.
    pub fn append(
        &mut self,
        actor: &SecretKey,
        at: UnixTime,
        action: AuditAction,
    ) -> Result<&AuditEntry, AuditError> {
        let (seq, prev_hash) = match self.head() {
            Some((seq, hash)) => (seq + 1, hash),
            None => (0, [0; 32]),
        };
        let mut entry = AuditEntry {
            seq,
            prev_hash,
            at,
            actor: actor.public(),
            action,
            signature: Signature::from_bytes_unchecked([0; 64]),
        };
        entry.signature = actor.sign(domain::AUDIT, &entry.to_be_signed());
        self.accept(entry)?;
        self.entries
            .last()
            .ok_or_else(|| entry_error(seq, "entry vanished"))
    }

    /// Checks `entry` against the log so far and appends it.
    fn accept(&mut self, entry: AuditEntry) -> Result<(), AuditError> {
        let seq = entry.seq;
        let (expected_seq, expected_prev) = match self.head() {
            Some((s, h)) => (s + 1, h),
            None => (0, [0; 32]),
        };
        if entry.seq != expected_seq {
            return Err(entry_error(
                expected_seq,
                format!(
                    "sequence number {} where {expected_seq} was expected",
                    entry.seq
                ),
            ));
        }
        if entry.prev_hash != expected_prev {
            return Err(entry_error(
                seq,
                "hash chain broken: the entry before it was changed or removed",
            ));
        }
        match (&entry.action, seq) {
            (AuditAction::OrgCreated { admin, .. }, 0) => {
                if entry.actor != self.root {
                    return Err(entry_error(0, "the org must be created by its root key"));
                }
                let chain = CertChain::new(vec![admin.clone()])
                    .map_err(|e| entry_error(0, e.to_string()))?;
                chain
                    .verify_structure(&self.root, None)
                    .map_err(|e| entry_error(0, format!("first admin certificate: {e}")))?;
                if admin.kind() != CertKind::Admin {
                    return Err(entry_error(
                        0,
                        "the first admin certificate is not an admin",
                    ));
                }
            }
            (_, 0) => return Err(AuditError::NoOrigin),
            (AuditAction::OrgCreated { .. }, _) => {
                return Err(entry_error(seq, "the org can only be created once"));
            }
            _ if entry.actor == self.root || self.admins.contains(&entry.actor) => {}
            _ => return Err(AuditError::UnknownActor(entry.actor)),
        }
        entry
            .actor
            .verify(domain::AUDIT, &entry.to_be_signed(), &entry.signature)
            .map_err(|_| entry_error(seq, "signature does not verify: the entry was altered"))?;
        if let AuditAction::OrgCreated { admin, .. } = &entry.action {
            self.admins.insert(admin.subject());
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Parses and verifies a stored log. With `head`, the last entry must be that one.
    pub fn verify(
        root: PublicKey,
        bytes: &[u8],
        head: Option<(u64, [u8; 32])>,
    ) -> Result<Self, AuditError> {
        let mut log = Self::new(root);
        let mut rest = bytes;
        while !rest.is_empty() {
            let seq = log.head().map_or(0, |(s, _)| s + 1);
            let decode_err = |e: DecodeError| entry_error(seq, format!("malformed: {e}"));
            let (len, after) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| entry_error(seq, "malformed: truncated length"))?;
            let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
            if len > MAX_ENTRY_BYTES {
                return Err(decode_err(DecodeError::TooLong {
                    what: "audit entry",
                    len,
                    max: MAX_ENTRY_BYTES,
                }));
            }
            let body = after
                .get(..len)
                .ok_or_else(|| entry_error(seq, "malformed: truncated entry"))?;
            rest = after.get(len..).unwrap_or_default();
            log.accept(AuditEntry::decode(body).map_err(decode_err)?)?;
        }
        if let Some((expected_seq, expected_hash)) = head {
            match log.head() {
                Some((seq, hash)) if seq == expected_seq && hash == expected_hash => {}
                Some((seq, _)) if seq < expected_seq => {
                    return Err(AuditError::Truncated {
                        expected: expected_seq,
                        found: seq,
                    });
                }
                Some((seq, _)) => {
                    return Err(entry_error(
                        seq,
                        "the log's last entry is not the recorded head",
                    ));
                }
                None => {
                    return Err(AuditError::Truncated {
                        expected: expected_seq,
                        found: 0,
                    });
                }
            }
        }
        Ok(log)
    }
}
