//! Certificates and certificate chains.
//!
//! ```text
//! org root ─┬─ admin ──┬─ invite ── user ── device
//!           │          ├─ user (admin-made, e.g. recovery) ── device
//!           │          ├─ relay
//!           │          └─ gpu
//!           └─ user (personal mode: root signs its only user directly) ── device
//! ```
//!
//! A chain is ordered from the certificate the root signed down to the leaf. Verification checks
//! each signature, that each certificate was issued by the one above it, that the kinds may be
//! nested that way, the validity window, and the revocation set. An invite certificate delegates
//! the right to make exactly one user certificate (named as in the invite, with at most the
//! invite's roles, made while the invite was valid); the invite's secret key travels in the
//! invite token.

use std::fmt;

use thiserror::Error;

use crate::encoding::{DecodeError, Reader, Writer};
use crate::keys::{
    Name, PublicKey, SecretKey, Serial, Signature, SignatureError, UnixTime, domain,
};

const CERT_VERSION: u8 = 1;
const CHAIN_VERSION: u8 = 1;
/// Longest chain accepted: root → admin → admin → admin → invite → user → device is 6; two more
/// levels of admin delegation are headroom, not an invitation to deep hierarchies.
pub const MAX_CHAIN_LEN: usize = 8;
/// Longest encoded certificate: the fixed fields (~190 bytes) plus a name and an age recipient.
pub const MAX_CERT_BYTES: usize = 512;
/// An age X25519 recipient is 62 characters of bech32; a little headroom, nothing more.
const MAX_AGE_RECIPIENT_BYTES: usize = 96;
/// Clock skew tolerated between the machine that made a certificate and the one checking it.
pub const CLOCK_SKEW_SECS: u64 = 300;
/// How long a member's (user or device) certificate lasts, and the most a user certificate made
/// with an invite may last: an old invite token can mint nothing that outlives its window by
/// more than this.
pub const MEMBER_CERT_SECS: u64 = 2 * 365 * 24 * 3600;

/// What a certificate certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertKind {
    Admin,
    User,
    Invite,
    Relay,
    Gpu,
    Device,
}

impl CertKind {
    fn to_u8(self) -> u8 {
        match self {
            Self::Admin => 1,
            Self::User => 2,
            Self::Invite => 3,
            Self::Relay => 4,
            Self::Gpu => 5,
            Self::Device => 6,
        }
    }

    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => Self::Admin,
            2 => Self::User,
            3 => Self::Invite,
            4 => Self::Relay,
            5 => Self::Gpu,
            6 => Self::Device,
            other => return Err(DecodeError::invalid("certificate kind", format!("{other}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
            Self::Invite => "invite",
            Self::Relay => "relay",
            Self::Gpu => "gpu",
            Self::Device => "device",
        }
    }

    /// The roles a certificate of this kind may carry.
    fn allowed_roles(self) -> Roles {
        match self {
            Self::Admin => Roles::ADMIN,
            Self::User | Self::Invite => Roles(Roles::MEMBER.0 | Roles::ADMIN.0),
            Self::Relay => Roles::RELAY,
            Self::Gpu => Roles::GPU,
            Self::Device => Roles::NONE,
        }
    }
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles, as a bit set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Self = Self(0);
    pub const MEMBER: Self = Self(1);
    pub const ADMIN: Self = Self(2);
    pub const RELAY: Self = Self(4);
    pub const GPU: Self = Self(8);
    const ALL: u8 = 1 | 2 | 4 | 8;

    pub(crate) fn bits(self) -> u8 {
        self.0
    }

    pub(crate) fn from_bits(bits: u8) -> Result<Self, DecodeError> {
        if bits & !Self::ALL != 0 {
            return Err(DecodeError::invalid(
                "roles",
                format!("unknown role bits {bits:#04x}"),
            ));
        }
        Ok(Self(bits))
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::MEMBER, "member"),
            (Self::ADMIN, "admin"),
            (Self::RELAY, "relay"),
            (Self::GPU, "gpu"),
        ]
        .into_iter()
        .filter(|(role, _)| self.contains(*role))
        .map(|(_, name)| name)
        .collect()
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roles({})", self.names().join("|"))
    }
}

/// What to put in a new certificate.
#[derive(Debug, Clone)]
pub struct CertTemplate {
    pub kind: CertKind,
    pub subject: PublicKey,
    pub name: Name,
    pub roles: Roles,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    /// The device's age X25519 recipient (`age1…`); required on device certificates, absent on
    /// every other kind.
    pub age_recipient: Option<String>,
}

/// A signed certificate. Construct with [`Certificate::issue`] or [`Certificate::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    kind: CertKind,
    serial: Serial,
    issuer: PublicKey,
    subject: PublicKey,
    name: Name,
    roles: Roles,
    not_before: UnixTime,
    not_after: UnixTime,
    age_recipient: Option<String>,
    signature: Signature,
}

/// A template that cannot become a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IssueError {
    #[error("a {kind} certificate cannot carry the roles {roles:?}")]
    RolesNotAllowed {
        kind: CertKind,
        roles: Vec<&'static str>,
    },
    #[error("the certificate would expire ({not_after}) before it starts ({not_before})")]
    EmptyValidity {
        not_before: UnixTime,
        not_after: UnixTime,
    },
    #[error("device certificates need the device's age recipient; other kinds must not have one")]
    AgeRecipient,
    #[error("`{0}` is not an age X25519 recipient (age1…)")]
    BadAgeRecipient(String),
}

fn check_age_recipient(kind: CertKind, recipient: Option<&str>) -> Result<(), IssueError> {
    match (kind, recipient) {
        (CertKind::Device, Some(r)) => {
            let parsed: age::x25519::Recipient = r
                .parse()
                .map_err(|_| IssueError::BadAgeRecipient(r.chars().take(80).collect()))?;
            // Canonical form only, so that one key has one encoding.
            if parsed.to_string() != r || r.len() > MAX_AGE_RECIPIENT_BYTES {
                return Err(IssueError::BadAgeRecipient(r.chars().take(80).collect()));
            }
            Ok(())
        }
        (CertKind::Device, None) | (_, Some(_)) => Err(IssueError::AgeRecipient),
        (_, None) => Ok(()),
    }
}

fn check_template(t: &CertTemplate) -> Result<(), IssueError> {
    if t.roles.0 & !t.kind.allowed_roles().0 != 0 {
        return Err(IssueError::RolesNotAllowed {
            kind: t.kind,
            roles: t.roles.names(),
        });
    }
    if t.not_after < t.not_before {
        return Err(IssueError::EmptyValidity {
            not_before: t.not_before,
            not_after: t.not_after,
        });
    }
    check_age_recipient(t.kind, t.age_recipient.as_deref())
}

impl Certificate {
    /// Signs `template` with `issuer`.
    pub fn issue(template: CertTemplate, issuer: &SecretKey) -> Result<Self, IssueError> {
        check_template(&template)?;
        let mut cert = Self {
            kind: template.kind,
            serial: Serial::random(),
            issuer: issuer.public(),
            subject: template.subject,
            name: template.name,
            roles: template.roles,
            not_before: template.not_before,
            not_after: template.not_after,
            age_recipient: template.age_recipient,
            signature: Signature::from_bytes_unchecked([0; 64]),
        };
        cert.signature = issuer.sign(domain::CERTIFICATE, &cert.to_be_signed());
        Ok(cert)
    }

    pub fn kind(&self) -> CertKind {
        self.kind
    }
    pub fn serial(&self) -> Serial {
        self.serial
    }
    pub fn issuer(&self) -> PublicKey {
        self.issuer
    }
    pub fn subject(&self) -> PublicKey {
        self.subject
    }
    pub fn name(&self) -> &Name {
        &self.name
    }
    pub fn roles(&self) -> Roles {
        self.roles
    }
    pub fn not_before(&self) -> UnixTime {
        self.not_before
    }
    pub fn not_after(&self) -> UnixTime {
        self.not_after
    }
    pub fn age_recipient(&self) -> Option<&str> {
        self.age_recipient.as_deref()
    }

    fn write_tbs(&self, w: &mut Writer) {
        w.u8(CERT_VERSION)
            .u8(self.kind.to_u8())
            .fixed(&self.serial.0);
        self.issuer.write(w);
        self.subject.write(w);
        self.name.write(w);
        w.u8(self.roles.0)
            .u64(self.not_before.0)
            .u64(self.not_after.0);
        match &self.age_recipient {
            Some(r) => w.u8(1).str(r),
            None => w.u8(0),
        };
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
        r.version("certificate", CERT_VERSION)?;
        let kind = CertKind::from_u8(r.u8("certificate kind")?)?;
        let serial = Serial(r.array("serial")?);
        let issuer = PublicKey::read(r, "issuer key")?;
        let subject = PublicKey::read(r, "subject key")?;
        let name = Name::read(r)?;
        let roles = Roles::from_bits(r.u8("roles")?)?;
        let not_before = UnixTime(r.u64("not-before")?);
        let not_after = UnixTime(r.u64("not-after")?);
        let age_recipient = if r.present("age recipient")? {
            Some(r.str("age recipient", MAX_AGE_RECIPIENT_BYTES)?.to_owned())
        } else {
            None
        };
        let signature = Signature::read(r)?;
        let template = CertTemplate {
            kind,
            subject,
            name: name.clone(),
            roles,
            not_before,
            not_after,
            age_recipient: age_recipient.clone(),
        };
        check_template(&template)
            .map_err(|e| DecodeError::invalid("certificate", e.to_string()))?;
        Ok(Self {
            kind,
            serial,
            issuer,
            subject,
            name,
            roles,
            not_before,
            not_after,
            age_recipient,
            signature,
        })
    }

    /// Decodes one certificate; trailing bytes are an error. Does not check the signature:
    /// [`CertChain::verify`] does, against the org root.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_CERT_BYTES {
            return Err(DecodeError::TooLong {
                what: "certificate",
                len: bytes.len(),
                max: MAX_CERT_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        let cert = Self::read(&mut r)?;
        r.finish("certificate")?;
        Ok(cert)
    }

    /// `(issuer key, domain || to-be-signed bytes, signature)`, for the benchmark reference.
    pub(crate) fn signed_parts(&self) -> ([u8; 32], Vec<u8>, [u8; 64]) {
        let mut message = domain::CERTIFICATE.to_vec();
        message.extend_from_slice(&self.to_be_signed());
        (self.issuer.to_bytes(), message, self.signature.to_bytes())
    }

    fn verify_signature(&self) -> Result<(), SignatureError> {
        self.issuer
            .verify(domain::CERTIFICATE, &self.to_be_signed(), &self.signature)
    }

    /// A short description for error messages: "device `laptop` (12D3KooW…)".
    pub fn describe(&self) -> String {
        format!("{} `{}` ({})", self.kind, self.name, self.subject)
    }
}

/// Why a chain does not prove membership of the org.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("the certificate chain is empty")]
    Empty,
    #[error("the certificate chain has {0} certificates, more than the {MAX_CHAIN_LEN} allowed")]
    TooLong(usize),
    #[error(
        "the certificate chain belongs to another org: it starts at {found}, but this org's root is {expected}"
    )]
    OtherOrg {
        expected: PublicKey,
        found: PublicKey,
    },
    #[error("{cert} was not issued by the certificate above it in the chain")]
    BrokenLink { cert: String },
    #[error("the signature on {cert} does not verify: the certificate was altered or forged")]
    BadSignature { cert: String },
    #[error("{child} cannot be issued by {parent}")]
    BadNesting { parent: String, child: String },
    #[error("{cert} expired at {not_after} (now {now})")]
    Expired {
        cert: String,
        not_after: UnixTime,
        now: UnixTime,
    },
    #[error("{cert} is not valid until {not_before} (now {now}); check this machine's clock")]
    NotYetValid {
        cert: String,
        not_before: UnixTime,
        now: UnixTime,
    },
    #[error("user `{user}` is not the user invite {serial} was made for (`{invited}`)")]
    InviteNameMismatch {
        user: String,
        invited: String,
        serial: Serial,
    },
    #[error("{cert} claims roles {claimed:?} beyond what its invite grants ({granted:?})")]
    InviteRolesExceeded {
        cert: String,
        claimed: Vec<&'static str>,
        granted: Vec<&'static str>,
    },
    #[error("{cert} was made outside its invite's validity ({from} to {until})")]
    InviteNotValidThen {
        cert: String,
        from: UnixTime,
        until: UnixTime,
    },
    #[error("{cert} lasts longer than a user made with an invite may ({MEMBER_CERT_SECS} s)")]
    InviteLifetimeExceeded { cert: String },
    #[error("{cert} has been revoked: {reason}")]
    Revoked { cert: String, reason: String },
}

/// Certificates from the one the root signed down to a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertChain(Vec<Certificate>);

/// What a verified chain proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The leaf's key: the principal the chain is about.
    pub subject: PublicKey,
    pub kind: CertKind,
    pub name: Name,
    /// The leaf's roles; for a device, the roles of its user.
    pub roles: Roles,
    /// The user the leaf belongs to (the user itself, or a device's user).
    pub user: Option<Name>,
    /// That user's key: what "the same user" means (two users may share a name: a second
    /// invite for it, or a name reused after a revocation).
    pub user_key: Option<PublicKey>,
    /// The earliest expiry in the chain: the chain stops verifying then.
    pub expires_at: UnixTime,
}

impl CertChain {
    pub fn new(certs: Vec<Certificate>) -> Result<Self, ChainError> {
        if certs.is_empty() {
            return Err(ChainError::Empty);
        }
        if certs.len() > MAX_CHAIN_LEN {
            return Err(ChainError::TooLong(certs.len()));
        }
        Ok(Self(certs))
    }

    /// An empty chain, meaning "signed by the org root itself" where a chain is optional.
    pub(crate) fn root_signed() -> Self {
        Self(Vec::new())
    }

    pub fn certs(&self) -> &[Certificate] {
        &self.0
    }

    pub fn leaf(&self) -> Option<&Certificate> {
        self.0.last()
    }

    /// This chain with `cert` appended below its leaf.
    pub fn extend(&self, cert: Certificate) -> Result<Self, ChainError> {
        let mut certs = self.0.clone();
        certs.push(cert);
        Self::new(certs)
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u8(CHAIN_VERSION)
            .u8(u8::try_from(self.0.len()).unwrap_or(u8::MAX));
        for cert in &self.0 {
            cert.write(w);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.finish()
    }

    /// Reads a chain of 0 to [`MAX_CHAIN_LEN`] certificates (0 only where the caller allows a
    /// root-signed record).
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("certificate chain", CHAIN_VERSION)?;
        let count = usize::from(r.u8("chain length")?);
        if count > MAX_CHAIN_LEN {
            return Err(DecodeError::TooLong {
                what: "certificate chain",
                len: count,
                max: MAX_CHAIN_LEN,
            });
        }
        let mut certs = Vec::with_capacity(count);
        for _ in 0..count {
            certs.push(Certificate::read(r)?);
        }
        Ok(Self(certs))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let chain = Self::read(&mut r)?;
        r.finish("certificate chain")?;
        if chain.0.is_empty() {
            return Err(DecodeError::invalid("certificate chain", "empty"));
        }
        Ok(chain)
    }

    /// Signatures, links, nesting and (when `now` is given) validity windows, but not
    /// revocations: for showing what a chain claims even when it is revoked or expired.
    pub fn verify_structure(
        &self,
        root: &PublicKey,
        now: Option<UnixTime>,
    ) -> Result<Verified, ChainError> {
        let leaf = match self.0.last() {
            Some(leaf) => leaf,
            None => return Err(ChainError::Empty),
        };
        if self.0.len() > MAX_CHAIN_LEN {
            return Err(ChainError::TooLong(self.0.len()));
        }
        let mut parent: Option<&Certificate> = None;
        let mut user = None;
        let mut user_key = None;
        let mut roles = Roles::NONE;
        let mut expires_at = UnixTime(u64::MAX);
        for (index, cert) in self.0.iter().enumerate() {
            let expected_issuer = parent.map_or(*root, Certificate::subject);
            if cert.issuer != expected_issuer {
                return Err(if index == 0 {
                    ChainError::OtherOrg {
                        expected: *root,
                        found: cert.issuer,
                    }
                } else {
                    ChainError::BrokenLink {
                        cert: cert.describe(),
                    }
                });
            }
            cert.verify_signature()
                .map_err(|SignatureError| ChainError::BadSignature {
                    cert: cert.describe(),
                })?;
            check_nesting(parent, cert)?;
            let is_leaf = index + 1 == self.0.len();
            // An invite above a user only bounds when that user was made (`check_nesting`); an
            // invite that is itself the leaf is being redeemed now, so it must be valid now.
            let time_checked = cert.kind != CertKind::Invite || is_leaf;
            if time_checked {
                expires_at = expires_at.min(cert.not_after);
                if let Some(now) = now {
                    if now.saturating_add_secs(CLOCK_SKEW_SECS) < cert.not_before {
                        return Err(ChainError::NotYetValid {
                            cert: cert.describe(),
                            not_before: cert.not_before,
                            now,
                        });
                    }
                    if now > cert.not_after {
                        return Err(ChainError::Expired {
                            cert: cert.describe(),
                            not_after: cert.not_after,
                            now,
                        });
                    }
                }
            }
            match cert.kind {
                CertKind::User => {
                    user = Some(cert.name.clone());
                    user_key = Some(cert.subject);
                    roles = cert.roles;
                }
                CertKind::Device => {}
                _ => roles = cert.roles,
            }
            parent = Some(cert);
        }
        Ok(Verified {
            subject: leaf.subject,
            kind: leaf.kind,
            name: leaf.name.clone(),
            roles,
            user,
            user_key,
            expires_at,
        })
    }
}

/// May `parent` (None: the org root) issue `child`?
fn check_nesting(parent: Option<&Certificate>, child: &Certificate) -> Result<(), ChainError> {
    let is_admin = |p: Option<&Certificate>| match p {
        None => true,
        Some(p) => {
            matches!(p.kind, CertKind::Admin | CertKind::User) && p.roles.contains(Roles::ADMIN)
        }
    };
    let allowed = match child.kind {
        CertKind::Admin | CertKind::Invite | CertKind::Relay | CertKind::Gpu => is_admin(parent),
        CertKind::User => match parent {
            Some(invite) if invite.kind == CertKind::Invite => {
                if invite.name != child.name {
                    return Err(ChainError::InviteNameMismatch {
                        user: child.name.to_string(),
                        invited: invite.name.to_string(),
                        serial: invite.serial,
                    });
                }
                if !invite.roles.contains(child.roles) {
                    return Err(ChainError::InviteRolesExceeded {
                        cert: child.describe(),
                        claimed: child.roles.names(),
                        granted: invite.roles.names(),
                    });
                }
                if child.not_before < invite.not_before || child.not_before > invite.not_after {
                    return Err(ChainError::InviteNotValidThen {
                        cert: child.describe(),
                        from: invite.not_before,
                        until: invite.not_after,
                    });
                }
                if child.not_after > child.not_before.saturating_add_secs(MEMBER_CERT_SECS) {
                    return Err(ChainError::InviteLifetimeExceeded {
                        cert: child.describe(),
                    });
                }
                true
            }
            other => is_admin(other),
        },
        CertKind::Device => matches!(parent, Some(p) if p.kind == CertKind::User),
    };
    if allowed {
        Ok(())
    } else {
        Err(ChainError::BadNesting {
            parent: parent.map_or_else(|| "the org root".to_owned(), Certificate::describe),
            child: child.describe(),
        })
    }
}
