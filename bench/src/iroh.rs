//! The reference of `relay-capacity`: iroh-relay 1.4 from crates.io (feature `server`), the
//! relay iroh's peers use, in its own process (this binary again, told so by
//! [`SERVER_ENV`]), so its resident memory is its own. Its clients are iroh-relay's own client,
//! each with its own key, through iroh-relay's authentication handshake (a challenge signed by
//! the client's key), over plain HTTP on loopback, then idle: a task per client reads its
//! stream and answers the relay's keep-alive pings, as iroh does.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use iroh_relay::client::ClientBuilder;
use iroh_relay::protos::relay::{ClientToRelayMsg, RelayToClientMsg};
use iroh_relay::server::{RelayConfig, Server, ServerConfig};

use crate::ramp::{Ramp, rss_bytes};

/// Set in the environment of the child that runs the iroh-relay server.
pub const SERVER_ENV: &str = "JARVIS_BENCH_IROH_RELAY_SERVER";

/// In the server child: runs iroh-relay on 127.0.0.1 (plain HTTP, no rate limit), prints its
/// URL, and serves until stdin closes.
pub fn serve() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut relay = RelayConfig::new((Ipv4Addr::LOCALHOST, 0));
        relay.key_cache_capacity = Some(1 << 16);
        let mut config = ServerConfig::default();
        config.relay = Some(relay);
        let server = Server::spawn(config).await?;
        let addr = server
            .http_addr()
            .context("iroh-relay has no HTTP address")?;
        println!("http://{addr}");
        std::io::stdout().flush()?;
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await?;
        server.shutdown().await?;
        Ok(())
    })
}

/// One connected, authenticated, idle client; dropping it closes the connection.
struct Idle(tokio::task::JoinHandle<()>);

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect(
    url: &iroh_base::RelayUrl,
    dns: &iroh_dns::dns::DnsResolver,
    tls: &rustls::ClientConfig,
) -> Result<Idle> {
    let client = ClientBuilder::new(url.clone(), iroh_base::SecretKey::generate(), dns.clone())
        .tls_client_config(tls.clone())
        .connect()
        .await?;
    let (mut stream, mut sink) = client.split();
    Ok(Idle(tokio::spawn(async move {
        use futures::SinkExt;
        while let Some(Ok(message)) = stream.next().await {
            if let RelayToClientMsg::Ping(data) = message
                && sink.send(ClientToRelayMsg::Pong(data)).await.is_err()
            {
                break;
            }
        }
    })))
}

/// The same ramp as ours: clients connect in `steps`, the server's RSS read after each.
pub async fn ramp(steps: &[usize], budget: u64) -> Result<Ramp> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(SERVER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the iroh-relay server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let url: iroh_base::RelayUrl = line.trim().parse().context("iroh-relay printed no URL")?;
    let dns = iroh_dns::dns::DnsResolver::new();
    let tls = iroh_relay::tls::CaTlsConfig::default()
        .client_config(iroh_relay::tls::default_provider())?;
    let mut clients: Vec<Idle> = Vec::new();
    let mut points = Vec::new();
    let outcome = async {
        for &step in steps {
            let missing = step.saturating_sub(clients.len());
            let made: Vec<Result<Idle>> = futures::stream::iter(0..missing)
                .map(|_| connect(&url, &dns, &tls))
                .buffer_unordered(32)
                .collect()
                .await;
            for c in made {
                clients.push(c?);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = rss_bytes(child.id())?;
            eprintln!("iroh-relay: {step} clients, RSS {:.1} MB", rss as f64 / 1e6);
            points.push((step, rss));
            if rss > budget {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    drop(clients);
    drop(child.stdin.take());
    let _ = child.wait();
    outcome?;
    Ok(Ramp { points })
}
