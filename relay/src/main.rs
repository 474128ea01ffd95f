//! `jarvis-relay`: the org relay server. Today: circuit relay v2 (with identify and ping), so
//! devices behind NAT or on networks that cannot route to each other still reach each other.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, identify, ping, relay};

/// The Jarvis org relay.
#[derive(Debug, Parser)]
#[command(name = "jarvis-relay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay: circuit relay for the org's devices. Prints its peer id and addresses as
    /// JSON lines.
    Up {
        /// Addresses to listen on (default: QUIC and TCP on port 4001, every interface).
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JARVIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let Command::Up { listen } = cli.command;
    let listen = if listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/udp/4001/quic-v1".parse()?,
            "/ip4/0.0.0.0/tcp/4001".parse()?,
        ]
    } else {
        listen
    };
    // TODO(relay issue): the relay's key comes from its enrolled home (`jarvis-relay install`);
    // until then each run has a fresh identity, printed below.
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .context("setting up TCP")?
        .with_quic()
        .with_behaviour(|key| Behaviour {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay::Config::default()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/jarvis-relay/1.0.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
        })
        .context("setting up the relay")?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    for address in &listen {
        swarm
            .listen_on(address.clone())
            .with_context(|| format!("cannot listen on {address}"))?;
    }
    let peer_id = *swarm.local_peer_id();
    println!(
        "{}",
        serde_json::json!({ "event": "up", "peer_id": peer_id.to_string() })
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    // A relay is meant to be reachable where it listens: offer these addresses in
                    // reservations (the relay serves no reservation without one).
                    swarm.add_external_address(address.clone());
                    println!("{}", serde_json::json!({ "event": "listening", "address": address.to_string() }));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                    tracing::info!(?event, "relay");
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    // Peers tell us the address we see them at; that is how they learn theirs.
                    tracing::debug!(%peer_id, observed = %info.observed_addr, "identified");
                }
                _ => {}
            }
        }
    }
    println!("{}", serde_json::json!({ "event": "stopped" }));
    Ok(())
}
