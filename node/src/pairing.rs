//! Pairing over the network: `jarvis devices pair` on a device that holds the user key shows a
//! code; `jarvis join CODE` on the new device reaches it and gets its device certificate.
//!
//! ```text
//! new device                                   device with the user key
//! ──────────                                   ────────────────────────
//!                                              listens on /jarvis/pair/1, shows
//!                                              jvpair_… = (its peer id, addresses, secret, expiry)
//! dials the peer id (the transport proves it),
//! sends its join request + HMAC(secret, request) ─────▶ checks the HMAC and the request,
//!                                              ◀───── signs the device certificate: bundle
//! checks the bundle certifies its request
//! ```
//!
//! The secret never crosses the network; a peer that was not shown the code cannot produce the
//! MAC, and a wrong guess costs it the connection. The code expires (10 minutes by default) and
//! works once.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use jarvis_identity::enrol::{decode_pair_request, encode_pair_request};
use jarvis_identity::{
    Bundle, JoinRequest, KeyMaterial, Name, PairingCode, RequestKind, SecretKey,
};
use libp2p::request_response::{self, Message, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm};
use serde_json::json;

use crate::home::{
    ApprovedDevice, Home, HomeKind, HomeState, KeyFile, Passphrase, encode_chain, now,
};
use crate::mesh::{Frames, PAIR_PROTOCOL};
use crate::output::Output;

const MAX_PAIR_BYTES: usize = 64 * 1024;
/// Wrong MACs tolerated before the code is withdrawn (the secret is 128 bits, so this only stops
/// a confused or hostile peer from keeping the listener busy).
const MAX_BAD_ATTEMPTS: usize = 5;

#[derive(NetworkBehaviour)]
struct PairBehaviour {
    pair: request_response::Behaviour<Frames>,
}

fn swarm(key: &SecretKey) -> Result<Swarm<PairBehaviour>> {
    let keypair = key
        .to_libp2p_keypair()
        .context("deriving the libp2p identity")?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .context("setting up TCP")?
        .with_quic()
        .with_behaviour(|_| PairBehaviour {
            pair: request_response::Behaviour::with_codec(
                Frames::new(MAX_PAIR_BYTES),
                [(PAIR_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
            ),
        })
        .context("setting up pairing")?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(30))
                .with_substream_upgrade_protocol_override(jarvis_mesh::wire::NEGOTIATION)
        })
        .build())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `jarvis devices pair`: show a code, wait for the new device, certify it.
pub fn pair(home: &Home, out: Output, listen: Vec<Multiaddr>, expires: Duration) -> Result<()> {
    let mut state = home.load()?;
    let (Some(org), Some(user_chain), Some(own_chain)) =
        (state.org()?, state.user_chain()?, state.chain()?)
    else {
        bail!(
            "this device does not hold your user key, so it cannot pair devices: run `jarvis devices pair` on the device you first joined with (the one that used the invite)"
        );
    };
    if !home.has_key(KeyFile::User) {
        bail!(
            "this device does not hold your user key; pair from the device you first joined with"
        );
    }
    let passphrase = Passphrase::get("your keys")?;
    let user_key = home.unseal_key(KeyFile::User, &passphrase)?.signing;
    let device_key = home.unseal_key(KeyFile::Identity, &passphrase)?.signing;
    let listen = if listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
            "/ip4/0.0.0.0/tcp/0".parse()?,
        ]
    } else {
        listen
    };
    let (request, bundle) = runtime()?.block_on(async {
        let mut swarm = swarm(&device_key)?;
        for a in &listen {
            swarm.listen_on(a.clone()).with_context(|| format!("cannot listen on {a}"))?;
        }
        // Collect the addresses the listeners actually bound (every interface's).
        let mut addresses = Vec::new();
        let gather = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(gather);
        loop {
            tokio::select! {
                () = &mut gather => break,
                event = swarm.select_next_some() => {
                    if let SwarmEvent::NewListenAddr { address, .. } = event {
                        addresses.push(address.to_string());
                    }
                }
            }
        }
        if addresses.is_empty() {
            bail!("could not listen on any address for pairing");
        }
        addresses.truncate(jarvis_identity::enrol::MAX_PAIRING_ADDRESSES);
        let expires_at = now().saturating_add_secs(expires.as_secs());
        let code = PairingCode::new(device_key.public(), addresses, expires_at);
        let token = code.to_token();
        out.note("On the new device, run:\n  jarvis join <code>\nThe code (works once, until it expires):");
        out.emit(
            &json!({ "code": token, "expires_at": expires_at.to_string() }),
            || token.clone(),
        );
        let deadline = tokio::time::sleep(expires);
        tokio::pin!(deadline);
        let mut bad = 0;
        loop {
            let event = tokio::select! {
                () = &mut deadline => bail!("the pairing code expired before a device used it; run `jarvis devices pair` again"),
                event = swarm.select_next_some() => event,
            };
            let SwarmEvent::Behaviour(PairBehaviourEvent::Pair(request_response::Event::Message {
                peer,
                message: Message::Request { request, channel, .. },
                ..
            })) = event
            else {
                continue;
            };
            let answer = match decode_pair_request(&request).map_err(anyhow::Error::from) {
                Ok((request, mac)) if code.check_mac(&request, &mac) && request.kind() == RequestKind::Device => {
                    // The transport authenticated the new device's key: it must be the key its
                    // request certifies.
                    let expected = request.key().to_libp2p_peer_id().ok();
                    if expected != Some(peer) {
                        Err(anyhow!("the request's key is not the connection's key"))
                    } else {
                        request
                            .approve_device(&org, &user_key, &user_chain, now())
                            // Names this device, so the new one wraps its keys to it at once.
                            .map(|bundle| (request, bundle.with_sponsor(own_chain.clone())))
                            .map_err(Into::into)
                    }
                }
                Ok(_) => Err(anyhow!("wrong pairing secret")),
                Err(e) => Err(e),
            };
            match answer {
                Ok((request, bundle)) => {
                    let _ = swarm.behaviour_mut().pair.send_response(channel, bundle.encode());
                    // Let the response reach the new device before exiting: `ResponseSent` only
                    // means handed to the transport, and dropping the swarm then can cut it off.
                    // The new device closes the connection once it has read the bundle.
                    let flush = tokio::time::sleep(Duration::from_secs(3));
                    tokio::pin!(flush);
                    loop {
                        tokio::select! {
                            () = &mut flush => break,
                            event = swarm.select_next_some() => {
                                if let SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } = event
                                    && peer_id == peer
                                {
                                    break;
                                }
                            }
                        }
                    }
                    return Ok((request, bundle));
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "pairing attempt refused");
                    let _ = swarm.behaviour_mut().pair.send_response(channel, Vec::new());
                    bad += 1;
                    if bad >= MAX_BAD_ATTEMPTS {
                        bail!("too many failed pairing attempts; the code is withdrawn");
                    }
                }
            }
        }
    })?;
    state.approved_devices.push(ApprovedDevice {
        id: request.key().to_string(),
        name: request.name().to_string(),
        approved_at: now().0,
    });
    home.save(&state)?;
    // Every conversation key, of what was written before too, goes to it now (or when this
    // device's node next starts), readable through the relays. Outside the pairing runtime: it
    // may talk to the running node.
    crate::joined::record_sibling(home, out, &bundle.chain)?;
    out.emit(
        &json!({ "joined": request.key().to_string(), "name": request.name().as_str() }),
        || format!("Paired `{}` ({}).", request.name(), request.key()),
    );
    Ok(())
}

/// `jarvis join jvpair_…`: reach the device that shows the code and get certified by it.
pub fn join(home: &Home, out: Output, code: &str, device_name: Name) -> Result<()> {
    let code = PairingCode::from_token(code).context("cannot use this pairing code")?;
    if now() > code.expires_at {
        bail!(
            "this pairing code expired at {}; show a new one with `jarvis devices pair`",
            code.expires_at
        );
    }
    let state = home.load_or_new(HomeKind::Device)?;
    if let Some(org) = state.org()? {
        bail!(
            "{} already belongs to org `{}`; use a fresh --home for the new device",
            home.dir().display(),
            org.name
        );
    }
    let device_key = SecretKey::generate();
    let age = jarvis_identity::age::x25519::Identity::generate();
    let request = JoinRequest::create(
        RequestKind::Device,
        &device_key,
        device_name,
        Some(age.to_public().to_string()),
        now(),
    );
    let mac = code.mac(&request);
    let peer = code
        .peer
        .to_libp2p_peer_id()
        .context("the code's device id is not valid")?;
    let bundle = runtime()?.block_on(async {
        let mut swarm = swarm(&device_key)?;
        let mut dials = 0usize;
        for a in &code.addresses {
            if let Ok(addr) = a.parse::<Multiaddr>() {
                let addr = addr.with_p2p(peer).unwrap_or_else(|a| a);
                dials += usize::from(swarm.dial(addr).is_ok());
            }
        }
        if dials == 0 {
            bail!("the pairing code carries no address this device can dial");
        }
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        let mut sent = false;
        loop {
            let event = tokio::select! {
                () = &mut deadline => bail!("could not reach the device showing the code (same network? is `jarvis devices pair` still waiting?)"),
                event = swarm.select_next_some() => event,
            };
            match event {
                SwarmEvent::OutgoingConnectionError { .. } => {
                    dials = dials.saturating_sub(1);
                    if dials == 0 && !sent {
                        bail!("could not reach the device showing the code (same network? is `jarvis devices pair` still waiting?)");
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer && !sent => {
                    sent = true;
                    swarm.behaviour_mut().pair.send_request(&peer, encode_pair_request(&request, &mac));
                }
                SwarmEvent::Behaviour(PairBehaviourEvent::Pair(request_response::Event::Message {
                    message: Message::Response { response, .. },
                    ..
                })) => {
                    if response.is_empty() {
                        bail!("the other device refused the pairing (wrong or reused code?)");
                    }
                    return Bundle::decode(&response).context("the other device's answer is malformed");
                }
                SwarmEvent::Behaviour(PairBehaviourEvent::Pair(request_response::Event::OutboundFailure { error, .. })) => {
                    bail!("pairing failed: {error}");
                }
                _ => {}
            }
        }
    })?;
    bundle
        .check_for(&request, None, now())
        .context("the other device's bundle does not certify this device")?;
    // The device that paired us: the one the code named (the transport proved its key), a
    // device of the same user key. What this device writes is wrapped to it from the start.
    let sponsor = crate::joined::checked_sponsor(home, &bundle)?;
    if sponsor.as_ref().is_some_and(|s| s.key != code.peer) {
        bail!("the other device's bundle names another device than the one the code named");
    }
    let passphrase = Passphrase::new_for("this device's keys")?;
    home.seal_key(
        KeyFile::Identity,
        &KeyMaterial {
            signing: device_key,
            age: Some(age),
        },
        &passphrase,
    )?;
    let mut state = HomeState::new(HomeKind::Device);
    state.set_org(&bundle.org);
    state.chain = Some(encode_chain(&bundle.chain));
    home.save(&state)?;
    crate::joined::report_joined(home, out, &bundle.org, &bundle.chain)?;
    crate::joined::record_sponsor(home, out, sponsor)
}
