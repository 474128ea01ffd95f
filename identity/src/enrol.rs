//! Enrolment: invites for a user's first device, join requests and bundles for further devices
//! and infrastructure peers.
//!
//! ```text
//! first device              admin                         further device / relay / GPU peer
//! ────────────              ─────                         ─────────────────────────────────
//!              ◀─ invite ── Invite::create                JoinRequest::create ── request ─▶
//! Invite::redeem                                          (a joined device or the admin signs)
//!   makes user key + device key,                          ◀── bundle ── approve_device / enroll
//!   signs user cert with the invite key                   Bundle::install_check
//! ```
//!
//! The invite token carries the invite's secret key: whoever holds it may make one user
//! certificate for the invited name while the invite is valid. "One" is enforced where the org is
//! online (the relay records the first redemption); offline, an unused invite is a bearer
//! credential until it expires, so invites are short-lived by default.

use thiserror::Error;

use crate::cert::{CertChain, CertKind, CertTemplate, Certificate, ChainError, IssueError, Roles};
use crate::encoding::{DecodeError, Reader, Writer};
use crate::keys::{Name, PublicKey, SecretKey, Signature, UnixTime, domain};
use crate::revocation::RevocationSet;
use crate::token::{self, TokenError, TokenKind};

const ORG_VERSION: u8 = 1;
const INVITE_VERSION: u8 = 1;
const REQUEST_VERSION: u8 = 1;
const BUNDLE_VERSION: u8 = 1;
/// A bundle that carries its sponsor's chain (the device that approved the new one).
const BUNDLE_WITH_SPONSOR_VERSION: u8 = 2;
/// Relay addresses an org advertises in invites and bundles.
pub const MAX_RELAYS: usize = 16;
pub const MAX_RELAY_ADDR_BYTES: usize = 256;
pub use crate::cert::MEMBER_CERT_SECS;

/// The public facts about an org that every member carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgInfo {
    pub name: Name,
    pub root: PublicKey,
    /// Multiaddrs of the org's relays.
    pub relays: Vec<String>,
}

impl OrgInfo {
    pub(crate) fn write(&self, w: &mut Writer) {
        w.u8(ORG_VERSION);
        self.name.write(w);
        self.root.write(w);
        w.u8(u8::try_from(self.relays.len()).unwrap_or(u8::MAX));
        for relay in &self.relays {
            w.str(relay);
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("org info", ORG_VERSION)?;
        let name = Name::read(r)?;
        let root = PublicKey::read(r, "org root key")?;
        let count = usize::from(r.u8("relay count")?);
        if count > MAX_RELAYS {
            return Err(DecodeError::TooLong {
                what: "relay list",
                len: count,
                max: MAX_RELAYS,
            });
        }
        let mut relays = Vec::with_capacity(count);
        for _ in 0..count {
            relays.push(r.str("relay address", MAX_RELAY_ADDR_BYTES)?.to_owned());
        }
        Ok(Self { name, root, relays })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let org = Self::read(&mut r)?;
        r.finish("org info")?;
        Ok(org)
    }
}

#[derive(Debug, Error)]
pub enum EnrolError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("the invite's key does not match its certificate: the invite was altered")]
    InviteKeyMismatch,
    #[error("the invite token holds a {0} certificate, not an invite")]
    NotAnInvite(&'static str),
    #[error("the request's signature does not verify: it was altered; make a new one")]
    BadRequestSignature,
    #[error("this request is for a {found}, but it is being approved as a {expected}")]
    WrongRequestKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("the bundle certifies {found}, but this machine's request was for {expected}")]
    BundleForAnotherKey {
        expected: PublicKey,
        found: PublicKey,
    },
    #[error("the bundle's chain ends in a {found} certificate, expected a {expected}")]
    BundleWrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "the bundle's device certificate carries a different encryption key than this device's"
    )]
    BundleWrongAgeRecipient,
    #[error("the approving device's certificate is not a user's device (it is a {0})")]
    SponsorNotADevice(&'static str),
    #[error("the approving device belongs to another user than the one this bundle certifies")]
    SponsorOtherUser,
    #[error("the approving device's certificate carries no encryption key")]
    SponsorNoAgeRecipient,
    #[error("the bundle names this very device as the one that approved it")]
    SponsorIsSelf,
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

/// An invite, as the admin hands it out. Holds a secret key: `Debug` redacts it.
#[derive(Debug)]
pub struct Invite {
    org: OrgInfo,
    /// From the root-signed certificate down to the invite certificate.
    chain: CertChain,
    secret: SecretKey,
}

impl Invite {
    /// Makes an invite for `user` with `roles`, valid from `now` until `expires_at`, signed by
    /// `issuer` whose chain is `issuer_chain` (`None` for the org root itself).
    pub fn create(
        org: OrgInfo,
        issuer_chain: Option<&CertChain>,
        issuer: &SecretKey,
        user: Name,
        roles: Roles,
        now: UnixTime,
        expires_at: UnixTime,
    ) -> Result<Self, EnrolError> {
        let secret = SecretKey::generate();
        let cert = Certificate::issue(
            CertTemplate {
                kind: CertKind::Invite,
                subject: secret.public(),
                name: user,
                roles,
                not_before: now,
                not_after: expires_at,
                age_recipient: None,
            },
            issuer,
        )?;
        let chain = match issuer_chain {
            Some(chain) => chain.extend(cert)?,
            None => CertChain::new(vec![cert])?,
        };
        Ok(Self { org, chain, secret })
    }

    pub fn org(&self) -> &OrgInfo {
        &self.org
    }

    pub fn certificate(&self) -> Option<&Certificate> {
        self.chain.leaf()
    }

    pub fn to_token(&self) -> String {
        let mut w = Writer::new();
        w.u8(INVITE_VERSION);
        self.org.write(&mut w);
        self.chain.write(&mut w);
        w.fixed(&*self.secret.seed());
        token::armor(TokenKind::Invite, &w.finish())
    }

    /// Reads an invite token. Checks its form, not its validity: [`Invite::redeem`] does that.
    pub fn from_token(text: &str) -> Result<Self, EnrolError> {
        let bytes = token::dearmor(TokenKind::Invite, text)?;
        let malformed = token::malformed(TokenKind::Invite);
        let mut r = Reader::new(&bytes);
        r.version("invite", INVITE_VERSION).map_err(&malformed)?;
        let org = OrgInfo::read(&mut r).map_err(&malformed)?;
        let chain = CertChain::read(&mut r).map_err(&malformed)?;
        let seed = zeroize::Zeroizing::new(r.array::<32>("invite key").map_err(&malformed)?);
        r.finish("invite").map_err(&malformed)?;
        let secret = SecretKey::from_seed(&seed);
        match chain.leaf() {
            None => return Err(malformed(DecodeError::invalid("invite", "no certificate")).into()),
            Some(leaf) if leaf.kind() != CertKind::Invite => {
                return Err(EnrolError::NotAnInvite(leaf.kind().as_str()));
            }
            Some(leaf) if leaf.subject() != secret.public() => {
                return Err(EnrolError::InviteKeyMismatch);
            }
            Some(_) => {}
        }
        Ok(Self { org, chain, secret })
    }

    /// Redeems the invite on a new device: checks it against its org at `now`, makes the user's
    /// key and certificate, and certifies `device`. `expected_root` pins the org when the user
    /// was told its id out of band.
    pub fn redeem(
        &self,
        now: UnixTime,
        expected_root: Option<&PublicKey>,
        device: &DeviceKeys<'_>,
    ) -> Result<Redeemed, EnrolError> {
        let root = expected_root.unwrap_or(&self.org.root);
        let invite = self.chain.verify(root, now, &RevocationSet::new(*root))?;
        let user_key = SecretKey::generate();
        // The invite's expiry bounds when the user may be made, not how long the user lasts.
        let not_after = now.saturating_add_secs(MEMBER_CERT_SECS);
        let user_cert = Certificate::issue(
            CertTemplate {
                kind: CertKind::User,
                subject: user_key.public(),
                name: invite.name.clone(),
                roles: invite.roles,
                not_before: now,
                not_after,
                age_recipient: None,
            },
            &self.secret,
        )?;
        let user_chain = self.chain.extend(user_cert)?;
        let device_cert = certify_device(&user_key, &user_chain, device, now)?;
        let device_chain = user_chain.extend(device_cert)?;
        Ok(Redeemed {
            org: self.org.clone(),
            user_key,
            user_chain,
            device_chain,
        })
    }
}

/// The public half of a device that is being certified.
#[derive(Debug, Clone)]
pub struct DeviceKeys<'a> {
    pub key: PublicKey,
    pub name: &'a Name,
    /// `age1…`
    pub age_recipient: &'a str,
}

/// What a redeemed invite leaves on the first device.
#[derive(Debug)]
pub struct Redeemed {
    pub org: OrgInfo,
    pub user_key: SecretKey,
    pub user_chain: CertChain,
    pub device_chain: CertChain,
}

/// Issues a device certificate under a user, valid no longer than the user's chain.
pub fn certify_device(
    user_key: &SecretKey,
    user_chain: &CertChain,
    device: &DeviceKeys<'_>,
    now: UnixTime,
) -> Result<Certificate, EnrolError> {
    let user_expiry = user_chain
        .certs()
        .iter()
        .filter(|c| c.kind() != CertKind::Invite)
        .map(Certificate::not_after)
        .min()
        .unwrap_or(now);
    Ok(Certificate::issue(
        CertTemplate {
            kind: CertKind::Device,
            subject: device.key,
            name: device.name.clone(),
            roles: Roles::NONE,
            not_before: now,
            not_after: now.saturating_add_secs(MEMBER_CERT_SECS).min(user_expiry),
            age_recipient: Some(device.age_recipient.to_owned()),
        },
        user_key,
    )?)
}

/// Who is asking to be certified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Device,
    Relay,
    Gpu,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Relay => "relay",
            Self::Gpu => "gpu",
        }
    }
}

/// A new device's or infrastructure peer's request: its key, name and (for a device) its age
/// recipient, signed with the key itself to prove the requester holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    kind: RequestKind,
    key: PublicKey,
    name: Name,
    age_recipient: Option<String>,
    created_at: UnixTime,
    signature: Signature,
}

impl JoinRequest {
    pub fn create(
        kind: RequestKind,
        key: &SecretKey,
        name: Name,
        age_recipient: Option<String>,
        now: UnixTime,
    ) -> Self {
        let mut request = Self {
            kind,
            key: key.public(),
            name,
            age_recipient,
            created_at: now,
            signature: Signature::from_bytes_unchecked([0; 64]),
        };
        request.signature = key.sign(domain::REQUEST, &request.to_be_signed());
        request
    }

    pub fn kind(&self) -> RequestKind {
        self.kind
    }
    pub fn key(&self) -> PublicKey {
        self.key
    }
    pub fn name(&self) -> &Name {
        &self.name
    }
    pub fn created_at(&self) -> UnixTime {
        self.created_at
    }

    fn to_be_signed(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(REQUEST_VERSION).u8(match self.kind {
            RequestKind::Device => 1,
            RequestKind::Relay => 2,
            RequestKind::Gpu => 3,
        });
        self.key.write(&mut w);
        self.name.write(&mut w);
        match &self.age_recipient {
            Some(r) => w.u8(1).str(r),
            None => w.u8(0),
        };
        w.u64(self.created_at.0);
        w.finish()
    }

    pub fn to_token(&self) -> String {
        let mut bytes = self.to_be_signed();
        bytes.extend_from_slice(&self.signature.to_bytes());
        token::armor(TokenKind::Request, &bytes)
    }

    /// Reads a request and checks its self-signature.
    pub fn from_token(text: &str) -> Result<Self, EnrolError> {
        let bytes = token::dearmor(TokenKind::Request, text)?;
        let request = Self::decode(&bytes).map_err(token::malformed(TokenKind::Request))?;
        request
            .key
            .verify(domain::REQUEST, &request.to_be_signed(), &request.signature)
            .map_err(|_| EnrolError::BadRequestSignature)?;
        Ok(request)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("join request", REQUEST_VERSION)?;
        let kind = match r.u8("request kind")? {
            1 => RequestKind::Device,
            2 => RequestKind::Relay,
            3 => RequestKind::Gpu,
            other => return Err(DecodeError::invalid("request kind", format!("{other}"))),
        };
        let key = PublicKey::read(&mut r, "requester key")?;
        let name = Name::read(&mut r)?;
        let age_recipient = if r.present("age recipient")? {
            Some(r.str("age recipient", 96)?.to_owned())
        } else {
            None
        };
        let created_at = UnixTime(r.u64("request time")?);
        let signature = Signature::read(&mut r)?;
        r.finish("join request")?;
        if (kind == RequestKind::Device) != age_recipient.is_some() {
            return Err(DecodeError::invalid(
                "join request",
                "a device request needs an age recipient; others must not have one",
            ));
        }
        Ok(Self {
            kind,
            key,
            name,
            age_recipient,
            created_at,
            signature,
        })
    }

    fn expect_kind(&self, expected: RequestKind) -> Result<(), EnrolError> {
        if self.kind == expected {
            Ok(())
        } else {
            Err(EnrolError::WrongRequestKind {
                expected: expected.as_str(),
                found: self.kind.as_str(),
            })
        }
    }

    /// On a device that holds the user key: certify the requesting device as another device of
    /// the same user.
    pub fn approve_device(
        &self,
        org: &OrgInfo,
        user_key: &SecretKey,
        user_chain: &CertChain,
        now: UnixTime,
    ) -> Result<Bundle, EnrolError> {
        self.expect_kind(RequestKind::Device)?;
        let age_recipient = self.age_recipient.as_deref().unwrap_or_default();
        let cert = certify_device(
            user_key,
            user_chain,
            &DeviceKeys {
                key: self.key,
                name: &self.name,
                age_recipient,
            },
            now,
        )?;
        Ok(Bundle {
            org: org.clone(),
            chain: user_chain.extend(cert)?,
            sponsor: None,
        })
    }

    /// On an admin's machine: certify a relay or GPU peer for `valid_secs`.
    pub fn enroll(
        &self,
        org: &OrgInfo,
        admin_key: &SecretKey,
        admin_chain: Option<&CertChain>,
        name: Option<Name>,
        now: UnixTime,
        valid_secs: u64,
    ) -> Result<Bundle, EnrolError> {
        let (kind, roles) = match self.kind {
            RequestKind::Relay => (CertKind::Relay, Roles::RELAY),
            RequestKind::Gpu => (CertKind::Gpu, Roles::GPU),
            RequestKind::Device => {
                return Err(EnrolError::WrongRequestKind {
                    expected: "relay or gpu",
                    found: "device",
                });
            }
        };
        let cert = Certificate::issue(
            CertTemplate {
                kind,
                subject: self.key,
                name: name.unwrap_or_else(|| self.name.clone()),
                roles,
                not_before: now,
                not_after: now.saturating_add_secs(valid_secs),
                age_recipient: None,
            },
            admin_key,
        )?;
        let chain = match admin_chain {
            Some(chain) => chain.extend(cert)?,
            None => CertChain::new(vec![cert])?,
        };
        Ok(Bundle {
            org: org.clone(),
            chain,
            sponsor: None,
        })
    }
}

/// The answer to a [`JoinRequest`]: the org and the requester's certificate chain, and for a
/// device approved by another device of its user, that device's chain (its *sponsor*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub org: OrgInfo,
    pub chain: CertChain,
    /// The chain of the device that approved this one, so the new device can wrap conversation
    /// keys to it (the age recipient in its certificate) before the two ever meet. Untrusted
    /// until [`Bundle::check_sponsor`] accepts it.
    pub sponsor: Option<CertChain>,
}

/// The device that approved a new one, as [`Bundle::check_sponsor`] verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sponsor {
    pub key: PublicKey,
    pub name: Name,
    /// Its age recipient (`age1…`), from its certificate.
    pub age_recipient: String,
}

impl Bundle {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        // A bundle without a sponsor keeps the first version, so older devices still read it.
        w.u8(if self.sponsor.is_some() {
            BUNDLE_WITH_SPONSOR_VERSION
        } else {
            BUNDLE_VERSION
        });
        self.org.write(&mut w);
        self.chain.write(&mut w);
        if let Some(sponsor) = &self.sponsor {
            sponsor.write(&mut w);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("bundle")?;
        if version != BUNDLE_VERSION && version != BUNDLE_WITH_SPONSOR_VERSION {
            return Err(DecodeError::UnknownVersion {
                what: "bundle",
                version,
                supported: BUNDLE_WITH_SPONSOR_VERSION,
            });
        }
        let org = OrgInfo::read(&mut r)?;
        let chain = CertChain::read(&mut r)?;
        let sponsor = if version == BUNDLE_WITH_SPONSOR_VERSION {
            let sponsor = CertChain::read(&mut r)?;
            if sponsor.certs().is_empty() {
                return Err(DecodeError::invalid("bundle", "an empty sponsor chain"));
            }
            Some(sponsor)
        } else {
            None
        };
        r.finish("bundle")?;
        if chain.certs().is_empty() {
            return Err(DecodeError::invalid("bundle", "no certificates"));
        }
        Ok(Self {
            org,
            chain,
            sponsor,
        })
    }

    /// This bundle, naming `sponsor` (the approving device's own chain) as the device that
    /// approved it.
    #[must_use]
    pub fn with_sponsor(mut self, sponsor: CertChain) -> Self {
        self.sponsor = Some(sponsor);
        self
    }

    /// Checks the sponsor a device bundle names, on the new device: its chain verifies against
    /// the org root (`revocations` applied) at `now`, it is a *device* of the same user **key**
    /// as this bundle's chain (a name proves nothing), it is not the new device itself, and it
    /// carries an encryption key. `Ok(None)` when the bundle names no sponsor.
    pub fn check_sponsor(
        &self,
        now: UnixTime,
        revocations: &RevocationSet,
    ) -> Result<Option<Sponsor>, EnrolError> {
        let Some(sponsor) = &self.sponsor else {
            return Ok(None);
        };
        let verified = sponsor.verify(&self.org.root, now, revocations)?;
        if verified.kind != CertKind::Device {
            return Err(EnrolError::SponsorNotADevice(verified.kind.as_str()));
        }
        let own = self.chain.verify(&self.org.root, now, revocations)?;
        if verified.user_key.is_none() || verified.user_key != own.user_key {
            return Err(EnrolError::SponsorOtherUser);
        }
        if own.subject == verified.subject {
            return Err(EnrolError::SponsorIsSelf);
        }
        let age_recipient = sponsor
            .leaf()
            .and_then(Certificate::age_recipient)
            .filter(|r| !r.is_empty())
            .ok_or(EnrolError::SponsorNoAgeRecipient)?
            .to_owned();
        Ok(Some(Sponsor {
            key: verified.subject,
            name: verified.name,
            age_recipient,
        }))
    }

    pub fn to_token(&self) -> String {
        token::armor(TokenKind::Bundle, &self.encode())
    }

    pub fn from_token(text: &str) -> Result<Self, EnrolError> {
        let bytes = token::dearmor(TokenKind::Bundle, text)?;
        Ok(Self::decode(&bytes).map_err(token::malformed(TokenKind::Bundle))?)
    }

    /// Checks, on the machine that made `request`, that this bundle certifies exactly that
    /// request in a chain that verifies against the org (`expected_root` pins it). Returns the
    /// verified leaf.
    pub fn check_for(
        &self,
        request: &JoinRequest,
        expected_root: Option<&PublicKey>,
        now: UnixTime,
    ) -> Result<crate::cert::Verified, EnrolError> {
        let root = expected_root.unwrap_or(&self.org.root);
        let verified = self.chain.verify(root, now, &RevocationSet::new(*root))?;
        if verified.subject != request.key {
            return Err(EnrolError::BundleForAnotherKey {
                expected: request.key,
                found: verified.subject,
            });
        }
        let expected_kind = match request.kind {
            RequestKind::Device => CertKind::Device,
            RequestKind::Relay => CertKind::Relay,
            RequestKind::Gpu => CertKind::Gpu,
        };
        if verified.kind != expected_kind {
            return Err(EnrolError::BundleWrongKind {
                expected: expected_kind.as_str(),
                found: verified.kind.as_str(),
            });
        }
        let leaf_recipient = self.chain.leaf().and_then(Certificate::age_recipient);
        if leaf_recipient != request.age_recipient.as_deref() {
            return Err(EnrolError::BundleWrongAgeRecipient);
        }
        Ok(verified)
    }
}

const PAIRING_VERSION: u8 = 1;
/// Addresses a pairing code carries: enough for a laptop's interfaces, short enough to copy.
pub const MAX_PAIRING_ADDRESSES: usize = 8;
const PAIR_MAC_DOMAIN: &[u8] = b"jarvis/pair-mac/v1\0";

/// A pairing code, shown by a device that holds the user key (`jarvis devices pair`) and typed
/// on the new device (`jarvis join CODE`): where to reach the showing device (its key, which the
/// transport authenticates, and its addresses), a one-time secret that proves the new device was
/// shown the code, and when it stops working.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode {
    pub peer: PublicKey,
    pub addresses: Vec<String>,
    secret: [u8; 16],
    pub expires_at: UnixTime,
}

impl std::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingCode")
            .field("peer", &self.peer)
            .field("addresses", &self.addresses)
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl PairingCode {
    pub fn new(peer: PublicKey, addresses: Vec<String>, expires_at: UnixTime) -> Self {
        Self {
            peer,
            addresses,
            secret: crate::keys::random_bytes(),
            expires_at,
        }
    }

    pub fn to_token(&self) -> String {
        let mut w = Writer::new();
        w.u8(PAIRING_VERSION);
        self.peer.write(&mut w);
        w.u8(u8::try_from(self.addresses.len()).unwrap_or(u8::MAX));
        for a in &self.addresses {
            w.str(a);
        }
        w.fixed(&self.secret).u64(self.expires_at.0);
        token::armor(TokenKind::Pairing, &w.finish())
    }

    pub fn from_token(text: &str) -> Result<Self, EnrolError> {
        let bytes = token::dearmor(TokenKind::Pairing, text)?;
        let malformed = token::malformed(TokenKind::Pairing);
        let mut r = Reader::new(&bytes);
        r.version("pairing code", PAIRING_VERSION)
            .map_err(&malformed)?;
        let peer = PublicKey::read(&mut r, "pairing peer").map_err(&malformed)?;
        let count = usize::from(r.u8("address count").map_err(&malformed)?);
        if count > MAX_PAIRING_ADDRESSES {
            return Err(malformed(DecodeError::TooLong {
                what: "pairing addresses",
                len: count,
                max: MAX_PAIRING_ADDRESSES,
            })
            .into());
        }
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            addresses.push(
                r.str("address", MAX_RELAY_ADDR_BYTES)
                    .map_err(&malformed)?
                    .to_owned(),
            );
        }
        let secret = r.array("pairing secret").map_err(&malformed)?;
        let expires_at = UnixTime(r.u64("expiry").map_err(&malformed)?);
        r.finish("pairing code").map_err(&malformed)?;
        Ok(Self {
            peer,
            addresses,
            secret,
            expires_at,
        })
    }

    /// The MAC a new device puts on its request, proving it knows the code's secret.
    pub fn mac(&self, request: &JoinRequest) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret) {
            Ok(m) => m,
            // HMAC takes keys of any length; 16 bytes cannot fail.
            Err(_) => return [0; 32],
        };
        mac.update(PAIR_MAC_DOMAIN);
        mac.update(request.to_token().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks a MAC in constant time.
    pub fn check_mac(&self, request: &JoinRequest, mac: &[u8]) -> bool {
        use hmac::Mac;
        let Ok(mut expected) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.secret) else {
            return false;
        };
        expected.update(PAIR_MAC_DOMAIN);
        expected.update(request.to_token().as_bytes());
        expected.verify_slice(mac).is_ok()
    }
}

/// What a new device sends to the device showing the pairing code: its join request and the MAC
/// proving it was shown the code.
pub fn encode_pair_request(request: &JoinRequest, mac: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(1).str(&request.to_token()).fixed(mac);
    w.finish()
}

/// Reads a pairing request from the network; the request's self-signature is checked, the MAC
/// is returned for [`PairingCode::check_mac`].
pub fn decode_pair_request(bytes: &[u8]) -> Result<(JoinRequest, [u8; 32]), EnrolError> {
    let mut r = Reader::new(bytes);
    r.version("pairing request", 1)?;
    let request = JoinRequest::from_token(r.str("request", 4096)?)?;
    let mac = r.array::<32>("mac")?;
    r.finish("pairing request")?;
    Ok((request, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairing_codes_round_trip_and_macs_bind_the_request() {
        let device = SecretKey::generate();
        let code = PairingCode::new(
            device.public(),
            vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
            UnixTime(99),
        );
        let back = PairingCode::from_token(&code.to_token()).unwrap();
        assert_eq!(back, code);
        assert!(!format!("{code:?}").contains(&hex::encode(code.secret)));
        let request = JoinRequest::create(
            RequestKind::Device,
            &SecretKey::generate(),
            Name::new("tablet").unwrap(),
            Some(age::x25519::Identity::generate().to_public().to_string()),
            UnixTime(1),
        );
        let mac = code.mac(&request);
        assert!(code.check_mac(&request, &mac));
        let (back, back_mac) = decode_pair_request(&encode_pair_request(&request, &mac)).unwrap();
        assert_eq!((back, back_mac), (request.clone(), mac));
        let other = PairingCode::new(device.public(), vec![], UnixTime(99));
        assert!(!other.check_mac(&request, &mac));
        let other_request = JoinRequest::create(
            RequestKind::Device,
            &SecretKey::generate(),
            Name::new("tablet").unwrap(),
            Some(age::x25519::Identity::generate().to_public().to_string()),
            UnixTime(1),
        );
        assert!(!code.check_mac(&other_request, &mac));
    }
}
