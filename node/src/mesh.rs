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
pub use jarvis_identity::hello::{Hello, check_hello};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, dcutr, identify, mdns, ping, relay};

pub const AUTH_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/auth/1");
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/sync/1");
pub const PAIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/pair/1");
pub const MAX_AUTH_BYTES: usize = jarvis_identity::hello::MAX_HELLO_BYTES;
/// A sync message may carry a snapshot.
pub const MAX_SYNC_BYTES: usize = jarvis_crdt::sync::MAX_MESSAGE_BYTES;

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
        // A network without multicast (some Wi-Fi, containers) must not stop the node: it
        // still has --peer addresses and the org's relays.
        let mdns = if mdns_enabled {
            match mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id) {
                Ok(mdns) => Some(mdns),
                Err(e) => {
                    tracing::warn!(error = %e, "mDNS is unavailable; using --peer and relays only");
                    None
                }
            }
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
