//! The wire every peer speaks: the project's libp2p protocols and their framing.
//!
//! - `/jarvis/auth/1`: each side sends a [`Hello`](jarvis_identity::hello::Hello) (its
//!   certificate chain, sealed under a key derived from the org root, so that only a peer that
//!   knows the org reads it) as soon as a connection is up, and answers the other's with its own,
//!   now with the revocations it knows (or with a refusal that says why). Until a peer's chain
//!   verifies against the org root, names the key of the connection's `PeerId`, and is not
//!   revoked, nothing else is served to it. A hello is small ([`MAX_AUTH_BYTES`], at most
//!   [`AUTH_STREAMS`] at once per connection), so a stranger costs little before it is refused.
//! - `/jarvis/revocations/1` (admitted peers only): one side sends its whole revocation set, the
//!   other answers with its own, each merging what it did not know. Started when a hello's
//!   digest differs from ours, and pushed to every admitted peer when something new is learned.
//! - `/jarvis/sync/1`: one [`jarvis_crdt::SyncMessage`] per request, an empty response as the
//!   transport acknowledgement, sent only once what the message carried is durable. Order
//!   between requests is not guaranteed, which the sync protocol tolerates.
//! - `/jarvis/pair/1`: a new device's pairing code exchange (node only).
//!
//! Every frame is length-prefixed and refused above its protocol's maximum before it is read.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// Protocol negotiation on every new stream (each request is one) without a round trip of its
/// own: multistream-select's `V1Lazy` sends the protocol and the request together, where `V1`
/// (libp2p's default) waits for the listener's confirmation first. Every stream we open names
/// one protocol our own peers speak, with no negotiation nested inside, the case `V1Lazy` is
/// safe for. Measured with 20 ms ± 5 ms each way (`jarvis-bench sim-validate`): an
/// acknowledgement took 87 ms with `V1` (two round trips), a change reached the user's other
/// device in 131 ms (three).
pub const NEGOTIATION: libp2p::core::upgrade::Version = libp2p::core::upgrade::Version::V1Lazy;

pub const AUTH_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/auth/1");
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/sync/1");
pub const PAIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/pair/1");
pub const REVOCATIONS_PROTOCOL: StreamProtocol = StreamProtocol::new("/jarvis/revocations/1");
pub const MAX_AUTH_BYTES: usize = jarvis_identity::hello::MAX_HELLO_BYTES;
/// Hellos in flight per connection: one each way, and one more each when a hello crosses.
pub const AUTH_STREAMS: usize = 4;
/// An org's whole revocation set (about 20,000 records).
pub const MAX_REVOCATIONS_BYTES: usize = 4 << 20;
/// A sync message may carry a snapshot.
pub const MAX_SYNC_BYTES: usize = jarvis_crdt::sync::MAX_MESSAGE_BYTES;
/// What a request/response behaviour of ours allows in flight per peer: the sync window keeps
/// far fewer.
pub const MAX_STREAMS: usize = 64;

/// The peer an address names: its last `/p2p/` (in a relayed address
/// `…/p2p/RELAY/p2p-circuit/p2p/PEER` the first one is the relay).
pub fn peer_of(address: &libp2p::Multiaddr) -> Option<libp2p::PeerId> {
    address
        .iter()
        .filter_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .last()
}

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

/// What a frame's buffer starts with before its bytes arrive.
const READ_CHUNK: usize = 64 * 1024;

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
    // The buffer grows with the bytes that actually arrive, never to the announced length at
    // once: a peer that announces a large frame and sends little costs little.
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    let read = io.take(len as u64).read_to_end(&mut buf).await?;
    if read != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame ended after {read} of {len} bytes"),
        ));
    }
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

/// A request/response behaviour for `protocol` with frames up to `max` bytes, requests timing
/// out after `timeout`, at most [`MAX_STREAMS`] concurrent streams per peer.
pub fn behaviour(
    protocol: StreamProtocol,
    max: usize,
    timeout: std::time::Duration,
) -> request_response::Behaviour<Frames> {
    behaviour_with_streams(protocol, max, timeout, MAX_STREAMS)
}

/// The hello protocol's behaviour: small frames, few streams (anyone may speak it).
pub fn auth_behaviour(timeout: std::time::Duration) -> request_response::Behaviour<Frames> {
    behaviour_with_streams(AUTH_PROTOCOL, MAX_AUTH_BYTES, timeout, AUTH_STREAMS)
}

/// The revocation-set exchange's behaviour (serve it behind a gate: admitted peers only).
pub fn revocations_behaviour() -> request_response::Behaviour<Frames> {
    behaviour_with_streams(
        REVOCATIONS_PROTOCOL,
        MAX_REVOCATIONS_BYTES,
        std::time::Duration::from_secs(30),
        AUTH_STREAMS,
    )
}

fn behaviour_with_streams(
    protocol: StreamProtocol,
    max: usize,
    timeout: std::time::Duration,
    streams: usize,
) -> request_response::Behaviour<Frames> {
    request_response::Behaviour::with_codec(
        Frames::new(max),
        [(protocol, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(streams),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(len: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn frames_are_bounded_and_a_short_one_is_an_error_not_an_allocation() {
        futures::executor::block_on(async {
            let body = vec![7u8; 100_000];
            let ok = read_frame(&mut &frame(100_000, &body)[..], 1 << 20)
                .await
                .unwrap();
            assert_eq!(ok, body);
            let big = read_frame(&mut &frame(2 << 20, b"x")[..], 1 << 20).await;
            assert_eq!(big.unwrap_err().kind(), io::ErrorKind::InvalidData);
            // Announces 64 MiB (allowed) and sends 3 bytes: the read fails once the stream ends,
            // having held a buffer for what arrived only.
            let short = read_frame(&mut &frame(64 << 20, b"abc")[..], 64 << 20).await;
            assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        });
    }
}
