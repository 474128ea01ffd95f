//! The mesh's wire: the libp2p behaviour (transports and protocols), the framing codec of the
//! project's own protocols, and the authentication handshake's message.
//!
//! Protocols:
//! - `/jarvis/auth/1`: each side sends a [`Hello`] (its certificate chain and the revocations it
//!   knows) as soon as a connection is up, and answers the other's with its own. Until a peer's
//!   chain verifies against the org root, names the key of the connection's `PeerId`, and is not
//!   revoked, nothing else of ours is served to it; a peer that fails is disconnected.
//! - `/jarvis/sync/1`: one [`jarvis_crdt::SyncMessage`] per request, an empty response as the
//!   transport acknowledgement. Order between requests is not guaranteed, which the sync protocol
//!   tolerates (it is tested under random reordering, duplication and loss).

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use jarvis_identity::encoding::{DecodeError, Reader, Writer};
use jarvis_identity::{CertChain, PublicKey, RevocationSet, UnixTime, Verified};
use libp2p::PeerId;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, dcutr, identify, mdns, ping, relay};

pub const AUTH_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/auth/1");
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/sync/1");
pub const PAIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/pair/1");
/// A hello carries a chain (< 4 KiB) and the org's revocations.
pub const MAX_AUTH_BYTES: usize = 4 << 20;
/// A sync message may carry a snapshot.
pub const MAX_SYNC_BYTES: usize = jarvis_crdt::sync::MAX_MESSAGE_BYTES;
const HELLO_VERSION: u8 = 1;

/// Length-prefixed frames (`u32` big-endian length, then the bytes), refused above `max`.
#[derive(Debug, Clone, Copy)]
pub struct Frames {
    max: usize,
}

impl Frames {
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for Frames {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

/// Everything the node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub auth: request_response::Behaviour<Frames>,
    pub sync: request_response::Behaviour<Frames>,
}

impl Behaviour {
    pub fn new(
        key: &libp2p::identity::Keypair,
        relay_client: relay::client::Behaviour,
        mdns_enabled: bool,
    ) -> io::Result<Self> {
        let peer_id = key.public().to_peer_id();
        let mdns = if mdns_enabled {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                peer_id,
            )?)
        } else {
            None
        };
        let rr_config = |timeout_secs| {
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(timeout_secs))
                // Bounded streams per peer: the sync window keeps far fewer in flight.
                .with_max_concurrent_streams(64)
        };
        Ok(Self {
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            identify: identify::Behaviour::new(identify::Config::new(
                "/jarvis/1.0.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
            mdns: Toggle::from(mdns),
            auth: request_response::Behaviour::with_codec(
                Frames {
                    max: MAX_AUTH_BYTES,
                },
                [(AUTH_PROTOCOL, ProtocolSupport::Full)],
                rr_config(10),
            ),
            sync: request_response::Behaviour::with_codec(
                Frames {
                    max: MAX_SYNC_BYTES,
                },
                [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                rr_config(60),
            ),
        })
    }
}

/// The authentication handshake's message: who I am, and the revocations I know.
#[derive(Debug, Clone)]
pub struct Hello {
    pub chain: CertChain,
    /// An encoded [`RevocationSet`], verified by the receiver against its own org root.
    pub revocations: Vec<u8>,
}

impl Hello {
    pub fn new(chain: CertChain, revocations: &RevocationSet) -> Self {
        Self {
            chain,
            revocations: revocations.encode(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let chain = self.chain.encode();
        let mut w = Writer::with_capacity(9 + chain.len() + self.revocations.len());
        w.u8(HELLO_VERSION)
            .u32(u32::try_from(chain.len()).unwrap_or(u32::MAX))
            .fixed(&chain)
            .u32(u32::try_from(self.revocations.len()).unwrap_or(u32::MAX))
            .fixed(&self.revocations);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("hello", HELLO_VERSION)?;
        let chain_len = usize::try_from(r.u32("chain length")?).unwrap_or(usize::MAX);
        if chain_len > jarvis_identity::cert::MAX_CHAIN_LEN * jarvis_identity::cert::MAX_CERT_BYTES
        {
            return Err(DecodeError::TooLong {
                what: "chain",
                len: chain_len,
                max: jarvis_identity::cert::MAX_CHAIN_LEN * jarvis_identity::cert::MAX_CERT_BYTES,
            });
        }
        let chain = CertChain::decode(r.take_bytes("chain", chain_len)?)?;
        let rev_len = usize::try_from(r.u32("revocations length")?).unwrap_or(usize::MAX);
        if rev_len > MAX_AUTH_BYTES {
            return Err(DecodeError::TooLong {
                what: "revocations",
                len: rev_len,
                max: MAX_AUTH_BYTES,
            });
        }
        let revocations = r.take_bytes("revocations", rev_len)?.to_vec();
        r.finish("hello")?;
        Ok(Self { chain, revocations })
    }
}

/// What a hello proved.
#[derive(Debug)]
pub struct Checked {
    pub verified: Verified,
    /// The peer's age recipient, when it is a device.
    pub age_recipient: Option<String>,
    /// Revocations learned from the peer (already merged into the caller's set).
    pub new_revocations: usize,
}

/// The authentication gate, sans-IO: merges the revocations the peer sent (verified against our
/// org root; a set from another org is ignored), then verifies the peer's chain against the root
/// and the merged set at `now`, and checks that the chain certifies exactly the key the transport
/// authenticated for this connection (`peer`), so a stolen chain is useless without its key.
pub fn check_hello(
    root: &PublicKey,
    revocations: &mut RevocationSet,
    peer: PeerId,
    bytes: &[u8],
    now: UnixTime,
) -> Result<Checked, String> {
    let hello = Hello::decode(bytes).map_err(|e| format!("malformed hello: {e}"))?;
    let new_revocations = RevocationSet::decode(root, &hello.revocations)
        .ok()
        .and_then(|theirs| revocations.merge(&theirs).ok())
        .unwrap_or(0);
    let verified = hello
        .chain
        .verify(root, now, revocations)
        .map_err(|e| e.to_string())?;
    let expected = verified
        .subject
        .to_libp2p_peer_id()
        .map_err(|e| format!("bad key: {e}"))?;
    if expected != peer {
        return Err(format!(
            "the chain is for {}, but the connection is from {peer}",
            verified.subject
        ));
    }
    Ok(Checked {
        age_recipient: hello
            .chain
            .leaf()
            .and_then(|c| c.age_recipient())
            .map(str::to_owned),
        verified,
        new_revocations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jarvis_identity::{
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
        let age = jarvis_identity::age::x25519::Identity::generate();
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

    fn hello(chain: &CertChain, set: &RevocationSet) -> Vec<u8> {
        Hello::new(chain.clone(), set).encode()
    }

    #[test]
    fn the_gate_admits_members_and_refuses_everyone_else() {
        let acme = org();
        let mut set = RevocationSet::new(acme.info.root);
        let empty = RevocationSet::new(acme.info.root);
        let (key, chain) = device(&acme, "alice");
        let ok = check_hello(
            &acme.info.root,
            &mut set,
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
            &mut set,
            peer_of(&thief),
            &hello(&chain, &empty),
            NOW,
        )
        .unwrap_err();
        assert!(err.contains("connection is from"), "{err}");

        // Another org.
        let globex = org();
        let (gkey, gchain) = device(&globex, "mallory");
        let err = check_hello(
            &acme.info.root,
            &mut set,
            peer_of(&gkey),
            &hello(&gchain, &RevocationSet::new(globex.info.root)),
            NOW,
        )
        .unwrap_err();
        assert!(err.contains("another org"), "{err}");

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
                age_recipient: Some(
                    jarvis_identity::age::x25519::Identity::generate()
                        .to_public()
                        .to_string(),
                ),
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
                &mut set,
                peer_of(&forger),
                &hello(&forged, &empty),
                NOW
            )
            .is_err()
        );

        // Garbage.
        assert!(
            check_hello(
                &acme.info.root,
                &mut set,
                peer_of(&key),
                b"\x01garbage",
                NOW
            )
            .is_err()
        );
    }

    #[test]
    fn revocations_learned_from_a_peer_apply_at_once() {
        let acme = org();
        let (key, chain) = device(&acme, "alice");
        let (bob_key, bob_chain) = device(&acme, "bob");
        // Bob's hello carries the revocation of alice's device, which we had not seen.
        let mut theirs = RevocationSet::new(acme.info.root);
        theirs
            .insert(
                Revocation::issue(
                    RevocationTarget::Key(key.public()),
                    "lost",
                    NOW,
                    None,
                    &acme.root,
                )
                .unwrap(),
            )
            .unwrap();
        let mut ours = RevocationSet::new(acme.info.root);
        let checked = check_hello(
            &acme.info.root,
            &mut ours,
            peer_of(&bob_key),
            &hello(&bob_chain, &theirs),
            NOW,
        )
        .unwrap();
        assert_eq!(checked.new_revocations, 1);
        let err = check_hello(
            &acme.info.root,
            &mut ours,
            peer_of(&key),
            &hello(&chain, &RevocationSet::new(acme.info.root)),
            NOW,
        )
        .unwrap_err();
        assert!(err.contains("revoked"), "{err}");
    }
}
