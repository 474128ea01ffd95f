//! The authentication handshake of the mesh: each side of a new connection sends a [`Hello`]
//! (its certificate chain, and the digest of the revocations it knows), and [`check_hello`]
//! decides whether the peer is a member of the org, and who. Sans-IO: the node drives it over
//! libp2p.
//!
//! A hello is sealed (ChaCha20-Poly1305) under a key derived from the org root, so a peer that
//! does not know the org (a stranger on the LAN advertising itself on mDNS, a scanner) reads
//! nothing of it: not the org, not the names, not the device's age recipient. It is small
//! ([`MAX_HELLO_BYTES`]): the revocations themselves are exchanged on a protocol of their own,
//! only with admitted peers, when the digests differ (`jarvis_mesh::admission`). Records carry
//! no reasons (an admin keeps those in the audit log).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use libp2p_identity::PeerId;
use sha2::{Digest, Sha256};

use crate::encoding::{DecodeError, Reader, Writer};
use crate::keys::random_bytes;
use crate::{CertChain, ChainError, PublicKey, RevocationSet, UnixTime, Verified};

const HELLO_VERSION: u8 = 3;
const NONCE_BYTES: usize = 12;
/// A hello is a chain (at most `MAX_CHAIN_LEN` certificates) and a digest, sealed; anything
/// longer is refused before it is read.
pub const MAX_HELLO_BYTES: usize = 64 << 10;

/// The authentication handshake's message: who I am, and which revocations I know.
#[derive(Debug, Clone)]
pub struct Hello {
    pub chain: CertChain,
    /// [`RevocationSet::digest`] of the sender's set: a peer whose digest differs from ours
    /// exchanges sets with us once it is admitted.
    pub digest: [u8; 32],
}

impl Hello {
    pub fn new(chain: CertChain, revocations: &RevocationSet) -> Self {
        Self {
            chain,
            digest: revocations.digest(),
        }
    }

    /// Sealed for the org with this root: only a peer that knows the org opens it.
    pub fn encode(&self, root: &PublicKey) -> Vec<u8> {
        let chain = self.chain.encode();
        let mut w = Writer::with_capacity(36 + chain.len());
        w.u32(u32::try_from(chain.len()).unwrap_or(u32::MAX))
            .fixed(&chain)
            .fixed(&self.digest);
        seal(&w.finish(), root)
    }

    /// Opens a hello sealed for the org `root`; one sealed for another org (or for none) does
    /// not open.
    pub fn decode(bytes: &[u8], root: &PublicKey) -> Result<Self, DecodeError> {
        match unseal(bytes, root)? {
            Some(body) => Self::parse(&body),
            None => Err(DecodeError::invalid(
                "hello",
                "not sealed for this org".to_owned(),
            )),
        }
    }

    fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let chain_len = usize::try_from(r.u32("chain length")?).unwrap_or(usize::MAX);
        if chain_len > crate::cert::MAX_CHAIN_LEN * crate::cert::MAX_CERT_BYTES {
            return Err(DecodeError::TooLong {
                what: "chain",
                len: chain_len,
                max: crate::cert::MAX_CHAIN_LEN * crate::cert::MAX_CERT_BYTES,
            });
        }
        let chain = CertChain::decode(r.take_bytes("chain", chain_len)?)?;
        let digest = r.array("revocation digest")?;
        r.finish("hello")?;
        Ok(Self { chain, digest })
    }
}

/// The body of a hello, or `None` when it is well framed but not sealed for this org.
fn unseal(bytes: &[u8], root: &PublicKey) -> Result<Option<Vec<u8>>, DecodeError> {
    if bytes.len() > MAX_HELLO_BYTES {
        return Err(DecodeError::TooLong {
            what: "hello",
            len: bytes.len(),
            max: MAX_HELLO_BYTES,
        });
    }
    let mut r = Reader::new(bytes);
    r.version("hello", HELLO_VERSION)?;
    let nonce: [u8; NONCE_BYTES] = r.array("hello nonce")?;
    let sealed = r.rest();
    Ok(cipher(root)
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: sealed,
                aad: &[HELLO_VERSION],
            },
        )
        .ok())
}

/// Seals `inner` (a hello's body, or anything: the fuzz target feeds the parser under the seal
/// this way) for the org with this root.
#[doc(hidden)]
pub fn seal(inner: &[u8], root: &PublicKey) -> Vec<u8> {
    let nonce: [u8; NONCE_BYTES] = random_bytes();
    let sealed = cipher(root)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: inner,
                aad: &[HELLO_VERSION],
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
    out.push(HELLO_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// The key hellos of the org with this root are sealed with.
fn cipher(root: &PublicKey) -> ChaCha20Poly1305 {
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"jarvis/hello/v2 sealing key\0")
        .chain_update(root.to_bytes())
        .finalize()
        .into();
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

/// A refusal's first byte, where a hello has its version: never a hello's.
const REFUSAL_TAG: u8 = 0;
/// How a refusal received is told, before its reason: in logs, in `status` (`dialing`), and to
/// the UI, which looks for it.
pub const REFUSED_BY_PEER: &str = "the peer refused us: ";
/// The longest reason a refusal carries; a longer one is cut (at a character boundary).
pub const MAX_REFUSAL_REASON_BYTES: usize = 512;

/// The answer to a hello that was refused: the tag, then why, in UTF-8, so the refused peer can
/// tell its user ("invite already claimed by another user") instead of guessing.
pub fn encode_refusal(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REFUSAL_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(1 + end);
    out.push(REFUSAL_TAG);
    out.extend_from_slice(reason.as_bytes().get(..end).unwrap_or_default());
    out
}

/// Why the peer refused our hello, when `bytes` (its answer) is a refusal rather than its own
/// hello. An empty answer is a refusal without a reason (what peers before reasons sent); a
/// reason is cut to [`MAX_REFUSAL_REASON_BYTES`] and stripped of control characters, since it
/// comes from the network and ends up in logs and on screens.
pub fn decode_refusal(bytes: &[u8]) -> Option<String> {
    match bytes.split_first() {
        None => Some("no reason given".to_owned()),
        Some((&REFUSAL_TAG, reason)) => {
            let reason = reason.get(..MAX_REFUSAL_REASON_BYTES).unwrap_or(reason);
            let reason: String = String::from_utf8_lossy(reason)
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            Some(if reason.trim().is_empty() {
                "no reason given".to_owned()
            } else {
                reason
            })
        }
        Some(_) => None,
    }
}

/// What a hello proved.
#[derive(Debug)]
pub struct Checked {
    pub verified: Verified,
    /// The chain that proved it (the relay reads which invite a device came through).
    pub chain: CertChain,
    /// The peer's age recipient, when it is a device.
    pub age_recipient: Option<String>,
    /// The digest of the peer's revocations: if it differs from ours, the sets are exchanged.
    pub digest: [u8; 32],
}

/// Why a hello does not prove membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("malformed hello: {0}")]
    Malformed(#[from] DecodeError),
    /// Sealed for another org (or none): a stranger, or a peer of another org.
    #[error("not of this org (its hello is sealed for another org)")]
    OtherOrg,
    /// The chain does not verify (other org, forged, expired, revoked…).
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("bad key: {0}")]
    BadKey(String),
    /// A chain copied from someone else: it certifies another key than the connection's.
    #[error("the chain is for {chain}, but the connection is from {peer}")]
    WrongPeer { chain: PublicKey, peer: PeerId },
}

impl HelloError {
    /// The chain verified except that a certificate in it is revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self, Self::Chain(ChainError::Revoked { .. }))
    }
}

/// The authentication gate, sans-IO: opens the hello (sealed for our org), verifies the
/// peer's chain against the root and the revocations we know at `now`, and checks that the
/// chain certifies exactly the key the transport authenticated for this connection (`peer`), so
/// a stolen chain is useless without its key. Nothing the peer says changes our revocations
/// here: sets are exchanged only with admitted peers (and merged with
/// [`RevocationSet::merge_received`]).
pub fn check_hello(
    root: &PublicKey,
    revocations: &RevocationSet,
    peer: PeerId,
    bytes: &[u8],
    now: UnixTime,
) -> Result<Checked, HelloError> {
    let hello = match unseal(bytes, root)? {
        Some(body) => Hello::parse(&body)?,
        None => return Err(HelloError::OtherOrg),
    };
    let verified = hello.chain.verify(root, now, revocations)?;
    let expected = verified
        .subject
        .to_libp2p_peer_id()
        .map_err(|e| HelloError::BadKey(e.to_string()))?;
    if expected != peer {
        return Err(HelloError::WrongPeer {
            chain: verified.subject,
            peer,
        });
    }
    Ok(Checked {
        age_recipient: hello
            .chain
            .leaf()
            .and_then(|c| c.age_recipient())
            .map(str::to_owned),
        verified,
        chain: hello.chain,
        digest: hello.digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CertKind, CertTemplate, Certificate, DeviceKeys, Invite, Name, OrgInfo, Revocation,
        RevocationTarget, Roles, SecretKey,
    };

    const NOW: UnixTime = UnixTime(1_800_000_000);

    struct Org {
        root: SecretKey,
        info: OrgInfo,
    }

    fn org() -> Org {
        let root = SecretKey::generate();
        let info = OrgInfo {
            name: Name::new("acme").unwrap(),
            root: root.public(),
            relays: vec![],
        };
        Org { root, info }
    }

    /// A device of `user` in `org`: its key and chain.
    fn device(org: &Org, user: &str) -> (SecretKey, CertChain) {
        let invite = Invite::create(
            org.info.clone(),
            None,
            &org.root,
            Name::new(user).unwrap(),
            Roles::MEMBER,
            NOW,
            NOW.saturating_add_secs(60),
        )
        .unwrap();
        let key = SecretKey::generate();
        let age = age::x25519::Identity::generate();
        let redeemed = invite
            .redeem(
                NOW,
                None,
                &DeviceKeys {
                    key: key.public(),
                    name: &Name::new("d").unwrap(),
                    age_recipient: &age.to_public().to_string(),
                },
            )
            .unwrap();
        (key, redeemed.device_chain)
    }

    fn peer_of(key: &SecretKey) -> PeerId {
        key.public().to_libp2p_peer_id().unwrap()
    }

    #[test]
    fn a_refusal_carries_its_reason_and_is_never_taken_for_a_hello() {
        let refusal = encode_refusal("invite already claimed by another user");
        assert_eq!(
            decode_refusal(&refusal).as_deref(),
            Some("invite already claimed by another user")
        );
        assert!(Hello::decode(&refusal, &SecretKey::generate().public()).is_err());
        assert_eq!(decode_refusal(&[]).as_deref(), Some("no reason given"));
        assert_eq!(
            decode_refusal(&[REFUSAL_TAG]).as_deref(),
            Some("no reason given")
        );
        let acme = org();
        let (_, chain) = device(&acme, "alice");
        let empty = RevocationSet::new(acme.info.root);
        assert_eq!(decode_refusal(&hello(&chain, &empty)), None);
        // Cut at a character boundary, and cleaned of what a terminal would act on.
        let long = "é".repeat(MAX_REFUSAL_REASON_BYTES);
        let cut = encode_refusal(&long);
        assert!(cut.len() <= 1 + MAX_REFUSAL_REASON_BYTES);
        assert_eq!(
            decode_refusal(&cut).unwrap().chars().count(),
            MAX_REFUSAL_REASON_BYTES / 2
        );
        let mut nasty = vec![REFUSAL_TAG];
        nasty.extend_from_slice(b"revoked\x1b[2J\n\xff");
        assert_eq!(
            decode_refusal(&nasty).as_deref(),
            Some("revoked[2J\u{fffd}")
        );
    }

    fn hello(chain: &CertChain, set: &RevocationSet) -> Vec<u8> {
        Hello::new(chain.clone(), set).encode(&set.root())
    }

    /// #20 finding 6: a hello shows a peer that does not know the org nothing: not the org,
    /// the names, or the device's age recipient (before, all of it went in clear to anyone who
    /// connected, with the whole revocation set), and it carries no revocations at all: only
    /// their digest, so it stays small.
    #[test]
    fn a_hello_tells_a_stranger_nothing() {
        let acme = org();
        let (key, chain) = device(&acme, "alice");
        let mut set = RevocationSet::new(acme.info.root);
        for i in 0..200 {
            set.insert(
                Revocation::issue(
                    RevocationTarget::User(Name::new(&format!("mallory{i}")).unwrap()),
                    "",
                    NOW,
                    None,
                    &acme.root,
                )
                .unwrap(),
            )
            .unwrap();
        }
        let bytes = Hello::new(chain.clone(), &set).encode(&acme.info.root);
        assert!(bytes.len() < 4096, "{} bytes", bytes.len());
        let leaf = chain.leaf().unwrap();
        let secrets: [&[u8]; 4] = [
            b"alice",
            b"mallory",
            leaf.age_recipient().unwrap().as_bytes(),
            &acme.info.root.to_bytes(),
        ];
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{} is readable in the hello",
                String::from_utf8_lossy(secret)
            );
        }
        let stranger = SecretKey::generate().public();
        let err = Hello::decode(&bytes, &stranger).unwrap_err();
        assert!(err.to_string().contains("not sealed for this org"), "{err}");
        // Two hellos of the same chain do not even look alike.
        assert_ne!(
            bytes,
            Hello::new(chain.clone(), &set).encode(&acme.info.root)
        );

        let checked = check_hello(&acme.info.root, &set, peer_of(&key), &bytes, NOW).unwrap();
        assert_eq!(checked.digest, set.digest());
    }

    #[test]
    fn the_gate_admits_members_and_refuses_everyone_else() {
        let acme = org();
        let set = RevocationSet::new(acme.info.root);
        let empty = RevocationSet::new(acme.info.root);
        let (key, chain) = device(&acme, "alice");
        let ok = check_hello(
            &acme.info.root,
            &set,
            peer_of(&key),
            &hello(&chain, &empty),
            NOW,
        )
        .unwrap();
        assert_eq!(ok.verified.kind, CertKind::Device);
        assert!(ok.age_recipient.is_some());

        // A stolen chain: presented over a connection authenticated with another key.
        let thief = SecretKey::generate();
        let err = check_hello(
            &acme.info.root,
            &set,
            peer_of(&thief),
            &hello(&chain, &empty),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, HelloError::WrongPeer { .. }), "{err}");
        assert!(err.to_string().contains("connection is from"), "{err}");

        // Another org.
        let globex = org();
        let (gkey, gchain) = device(&globex, "mallory");
        let err = check_hello(
            &acme.info.root,
            &set,
            peer_of(&gkey),
            &hello(&gchain, &RevocationSet::new(globex.info.root)),
            NOW,
        )
        .unwrap_err();
        assert!(err.to_string().contains("another org"), "{err}");

        // A forged chain: a self-made device certificate claiming alice's user key signed it.
        let forger = SecretKey::generate();
        let mut certs = chain.certs().to_vec();
        let forged_leaf = Certificate::issue(
            CertTemplate {
                kind: CertKind::Device,
                subject: forger.public(),
                name: Name::new("evil").unwrap(),
                roles: Roles::NONE,
                not_before: NOW,
                not_after: NOW.saturating_add_secs(60),
                age_recipient: Some(age::x25519::Identity::generate().to_public().to_string()),
            },
            &forger,
        )
        .unwrap();
        certs.pop();
        certs.push(forged_leaf);
        let forged = CertChain::new(certs).unwrap();
        assert!(
            check_hello(
                &acme.info.root,
                &set,
                peer_of(&forger),
                &hello(&forged, &empty),
                NOW
            )
            .is_err()
        );

        // Garbage.
        assert!(check_hello(&acme.info.root, &set, peer_of(&key), b"\x01garbage", NOW).is_err());
    }
}
