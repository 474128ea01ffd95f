//! `mesh-sync`: how fast a change made on one device reaches the user's other device, over the
//! whole stack, against raw quinn carrying the same payloads on loopback.
//!
//! Ours: two `jarvis up` processes of one user (a laptop and a phone), connected over QUIC on
//! 127.0.0.1. Each change is a message posted to the laptop's local API (`POST /v1/ask` with no
//! model installed, so the node stores and syncs the message and answers nothing); it is
//! written to the laptop's store (sealed, signed, flushed), pushed over libp2p to the phone,
//! verified, decrypted, merged and flushed there, and counted when the phone's event stream
//! (`GET /v1/events`, what the desktop app watches) says the conversation grew.
//!
//! Reference: a quinn client and server in this process, on 127.0.0.1, sending the same payload
//! bytes as length-prefixed frames on one stream; a change counts when the server has read it.
//!
//! Figures, per round with the two interleaved (which goes first alternates):
//! - throughput: `burst` changes sent as fast as the sender takes them (16 requests in flight to
//!   the laptop; one stream written flat out for quinn), changes ÷ (first send → last arrival);
//!   the ratio is the median of the per-round ratios.
//! - propagation latency: changes sent one at a time, each after the last arrived; send → arrival,
//!   p50 and p99 over every round's samples.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::harness::{Figure, PASSPHRASE, cli_json, field, median, sibling};

pub const NAME: &str = "mesh-sync";

/// Bytes of text per change: a typical spoken question.
const PAYLOAD_BYTES: usize = 200;
/// Requests in flight to the laptop's API during a burst.
const IN_FLIGHT: usize = 16;

struct Plan {
    rounds: usize,
    burst: usize,
    pings: usize,
}

fn payload(round: usize, i: usize) -> String {
    let mut text = format!("round {round} change {i}: ");
    while text.len() < PAYLOAD_BYTES {
        text.push_str("what is the weather like in Paris tomorrow? ");
    }
    text.truncate(PAYLOAD_BYTES);
    text
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}

/// A running `jarvis up` with no model (so asking only stores and syncs).
struct Node {
    child: Child,
    api: String,
    token: String,
}

impl Node {
    fn start(jarvis: &Path, home: &Path, extra: &[String]) -> Result<Self> {
        let mut child = Command::new(jarvis)
            .env("JARVIS_PASSPHRASE", PASSPHRASE)
            .env("JARVIS_MODELS", home.join("no-models"))
            .arg("--home")
            .arg(home)
            .args([
                "up",
                "--json",
                "--no-mdns",
                "--no-voice",
                "--api",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting jarvis up")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        lines.read_line(&mut first)?;
        // Keep reading, so later lines never meet a closed pipe.
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = lines.read_to_end(&mut rest);
        });
        let up: Value = serde_json::from_str(&first).context("jarvis up did not start")?;
        let token = Command::new(jarvis)
            .arg("--home")
            .arg(home)
            .arg("token")
            .output()?;
        Ok(Self {
            child,
            api: field(&up, "api")?,
            token: String::from_utf8_lossy(&token.stdout).trim().to_owned(),
        })
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> Result<Value> {
        Ok(client
            .get(format!("http://{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Adds a message; returns its conversation. Without a model the node answers 503 with the
    /// saved message's conversation, which is what we want.
    async fn say(
        &self,
        client: &reqwest::Client,
        text: &str,
        conversation: Option<&str>,
    ) -> Result<String> {
        let response = client
            .post(format!("http://{}/v1/ask", self.api))
            .bearer_auth(&self.token)
            .json(&json!({ "text": text, "conversation": conversation }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        body.get("conversation_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("the laptop did not save the message ({status}): {body}"))
    }
}

impl Node {
    /// Its device id and the first address it listens on (the API answers before QUIC has
    /// said where it listens, so this waits for it).
    async fn listening(&self, client: &reqwest::Client) -> Result<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.get(client, "/v1/status").await?;
            let address = status
                .get("listen")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .map(str::to_owned);
            match address {
                Some(address) => return Ok((field(&status, "device_id")?, address)),
                None if Instant::now() > deadline => bail!("the node listens nowhere"),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// A node of nobody's pair (a personal org of its own) on the same machine: what an attack
/// aimed elsewhere costs the pair, for comparison with one aimed at the laptop.
pub(crate) struct Decoy {
    _node: Node,
    pub(crate) address: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        crate::harness::interrupt(&mut self.child);
    }
}

/// Two devices of one user, syncing, and the phone's message count as its events report it.
pub(crate) struct Pair {
    dir: tempfile::TempDir,
    laptop: Node,
    phone: Node,
    /// Where the laptop listens (`…/p2p/ID`), which the phone dials.
    pub(crate) laptop_address: String,
}

impl Pair {
    /// Starts a [`Decoy`] beside the pair.
    pub(crate) async fn decoy(&self, jarvis: &Path, client: &reqwest::Client) -> Result<Decoy> {
        let node = Node::start(jarvis, &self.dir.path().join("decoy"), &[])?;
        let (_, address) = node.listening(client).await?;
        Ok(Decoy {
            _node: node,
            address,
        })
    }

    /// The laptop node's process id.
    pub(crate) fn laptop_pid(&self) -> u32 {
        self.laptop.child.id()
    }

    /// Sends `count` messages from the laptop one at a time, each once the last has reached the
    /// phone; the send → arrival latencies in ms.
    pub(crate) async fn pings(&self, client: &reqwest::Client, count: usize) -> Result<Vec<f64>> {
        let mut rx = self.watch_phone(client).await?;
        let conversation = self.laptop.say(client, &payload(0, 0), None).await?;
        arrived(&mut rx, &conversation, 1).await?;
        let mut latencies = Vec::with_capacity(count);
        for i in 0..count {
            let sent = Instant::now();
            self.laptop
                .say(client, &payload(0, i + 1), Some(&conversation))
                .await?;
            let at = arrived(&mut rx, &conversation, 2 + i as u64).await?;
            latencies.push(at.duration_since(sent).as_secs_f64() * 1000.0);
        }
        Ok(latencies)
    }

    pub(crate) async fn start(jarvis: &Path, client: &reqwest::Client) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (admin, laptop, phone) = (
            dir.path().join("admin"),
            dir.path().join("laptop"),
            dir.path().join("phone"),
        );
        cli_json(jarvis, &admin, &["admin", "init", "--org", "bench"])?;
        let token = field(
            &cli_json(jarvis, &admin, &["admin", "invite", "user"])?,
            "token",
        )?;
        cli_json(
            jarvis,
            &laptop,
            &["join", &token, "--device-name", "laptop"],
        )?;
        let request = field(
            &cli_json(jarvis, &phone, &["devices", "request"])?,
            "request",
        )?;
        let bundle = field(
            &cli_json(jarvis, &laptop, &["devices", "approve", &request])?,
            "bundle",
        )?;
        cli_json(jarvis, &phone, &["join", &bundle])?;

        let laptop_node = Node::start(jarvis, &laptop, &[])?;
        let (laptop_id, address) = laptop_node.listening(client).await?;
        let laptop_address = address.clone();
        let phone_node = Node::start(jarvis, &phone, &["--peer".into(), address])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = phone_node.get(client, "/v1/status").await?;
            let syncing = status
                .get("peers")
                .and_then(Value::as_array)
                .is_some_and(|peers| {
                    peers.iter().any(|p| {
                        p.get("peer_id").and_then(Value::as_str) == Some(laptop_id.as_str())
                            && p.get("syncing") == Some(&Value::Bool(true))
                    })
                });
            if syncing {
                break;
            }
            if Instant::now() > deadline {
                bail!("the phone did not start syncing with the laptop: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            dir,
            laptop: laptop_node,
            phone: phone_node,
            laptop_address,
        })
    }

    /// Follows the phone's event stream: the message count of each conversation it reports.
    async fn watch_phone(
        &self,
        client: &reqwest::Client,
    ) -> Result<watch::Receiver<Option<(String, u64)>>> {
        let mut response = client
            .get(format!("http://{}/v1/events", self.phone.api))
            .bearer_auth(&self.phone.token)
            .send()
            .await?
            .error_for_status()?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    let Some(data) = event.trim().strip_prefix("data: ") else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    if v.get("type").and_then(Value::as_str) != Some("conversation") {
                        continue;
                    }
                    if let (Some(id), Some(n)) = (
                        v.get("id").and_then(Value::as_str),
                        v.get("messages").and_then(Value::as_u64),
                    ) && tx.send(Some((id.to_owned(), n))).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// Waits until the phone reports at least `count` messages in `conversation`.
async fn arrived(
    rx: &mut watch::Receiver<Option<(String, u64)>>,
    conversation: &str,
    count: u64,
) -> Result<Instant> {
    tokio::time::timeout(
        Duration::from_secs(60),
        rx.wait_for(|v| {
            v.as_ref()
                .is_some_and(|(id, n)| id == conversation && *n >= count)
        }),
    )
    .await
    .context("the phone did not receive the changes within 60 s")?
    .context("the phone's event stream ended")?;
    Ok(Instant::now())
}

/// One round of ours: a burst for throughput, then one-at-a-time changes for latency.
async fn ours_round(
    pair: &Pair,
    client: &reqwest::Client,
    plan: &Plan,
    round: usize,
    latencies: &mut Vec<f64>,
) -> Result<f64> {
    let mut rx = pair.watch_phone(client).await?;
    // A fresh conversation per round, so counts start at one.
    let conversation = pair.laptop.say(client, &payload(round, 0), None).await?;
    arrived(&mut rx, &conversation, 1).await?;
    let start = Instant::now();
    let sent: Vec<Result<String>> = futures::stream::iter(1..=plan.burst)
        .map(|i| {
            let text = payload(round, i);
            let conversation = conversation.clone();
            async move { pair.laptop.say(client, &text, Some(&conversation)).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for s in sent {
        s?;
    }
    let total = 1 + plan.burst as u64;
    let end = arrived(&mut rx, &conversation, total).await?;
    let throughput = plan.burst as f64 / end.duration_since(start).as_secs_f64();
    for i in 0..plan.pings {
        let sent = Instant::now();
        pair.laptop
            .say(
                client,
                &payload(round, plan.burst + 1 + i),
                Some(&conversation),
            )
            .await?;
        let at = arrived(&mut rx, &conversation, total + 1 + i as u64).await?;
        latencies.push(at.duration_since(sent).as_secs_f64() * 1000.0);
    }
    Ok(throughput)
}

/// The reference: a quinn server on loopback that reads length-prefixed frames from each
/// incoming stream and reports the time each arrived.
struct Quinn {
    client: quinn::Endpoint,
    server: quinn::Endpoint,
    addr: SocketAddr,
    arrivals: mpsc::UnboundedReceiver<Instant>,
}

impl Quinn {
    fn start() -> Result<Self> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        let cert_der = quinn::rustls::pki_types::CertificateDer::from(cert.cert);
        let key = quinn::rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
        let server_config =
            quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key.into())?;
        let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
        let addr = server.local_addr()?;
        let mut roots = quinn::rustls::RootCertStore::empty();
        roots.add(cert_der)?;
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(quinn::ClientConfig::with_root_certificates(Arc::new(
            roots,
        ))?);
        let (tx, arrivals) = mpsc::unbounded_channel();
        let accept = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    while let Ok(mut stream) = connection.accept_uni().await {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let mut len = [0u8; 4];
                            while stream.read_exact(&mut len).await.is_ok() {
                                let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
                                if stream.read_exact(&mut frame).await.is_err() {
                                    return;
                                }
                                std::hint::black_box(&frame);
                                if tx.send(Instant::now()).is_err() {
                                    return;
                                }
                            }
                        });
                    }
                });
            }
        });
        Ok(Self {
            client,
            server,
            addr,
            arrivals,
        })
    }

    async fn round(&mut self, plan: &Plan, round: usize, latencies: &mut Vec<f64>) -> Result<f64> {
        let connection = self.client.connect(self.addr, "localhost")?.await?;
        let mut stream = connection.open_uni().await?;
        let frame = |text: String| {
            let mut bytes = (text.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(text.as_bytes());
            bytes
        };
        let start = Instant::now();
        for i in 1..=plan.burst {
            stream.write_all(&frame(payload(round, i))).await?;
        }
        let mut end = start;
        for _ in 0..plan.burst {
            end = self.arrivals.recv().await.context("the server stopped")?;
        }
        let throughput = plan.burst as f64 / end.duration_since(start).as_secs_f64();
        for i in 0..plan.pings {
            let sent = Instant::now();
            stream
                .write_all(&frame(payload(round, plan.burst + 1 + i)))
                .await?;
            let at = self.arrivals.recv().await.context("the server stopped")?;
            latencies.push(at.duration_since(sent).as_secs_f64() * 1000.0);
        }
        stream.finish()?;
        connection.close(0u32.into(), b"done");
        Ok(throughput)
    }
}

impl Drop for Quinn {
    fn drop(&mut self) {
        self.server.close(0u32.into(), b"done");
    }
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let plan = if quick {
        Plan {
            rounds: 2,
            burst: 300,
            pings: 30,
        }
    } else {
        Plan {
            rounds: 5,
            burst: 2000,
            pings: 100,
        }
    };
    let jarvis = sibling("jarvis")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let pair = Pair::start(&jarvis, &client).await?;
        let mut quinn = Quinn::start()?;
        let (mut ours_lat, mut ref_lat) = (Vec::new(), Vec::new());
        let (mut ours_tp, mut ref_tp, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..plan.rounds {
            let (o, r) = if round % 2 == 0 {
                let o = ours_round(&pair, &client, &plan, round, &mut ours_lat).await?;
                (o, quinn.round(&plan, round, &mut ref_lat).await?)
            } else {
                let r = quinn.round(&plan, round, &mut ref_lat).await?;
                (
                    ours_round(&pair, &client, &plan, round, &mut ours_lat).await?,
                    r,
                )
            };
            eprintln!(
                "round {}/{}: {o:.0} vs {r:.0} changes/s",
                round + 1,
                plan.rounds
            );
            ours_tp.push(o);
            ref_tp.push(r);
            ratios.push(o / r);
        }
        ours_lat.sort_by(f64::total_cmp);
        ref_lat.sort_by(f64::total_cmp);
        let mut throughput = Figure::compared(
            NAME,
            "throughput_changes_per_s",
            median(ours_tp),
            median(ref_tp),
            ">= 0.8",
            "changes/s",
        );
        throughput.ratio = Some(median(ratios));
        let latency = |metric, p| {
            let (o, r) = (percentile(&ours_lat, p), percentile(&ref_lat, p));
            Figure {
                bench: NAME,
                metric,
                ours: o,
                reference: Some(r),
                ratio: (r > 0.0).then(|| o / r),
                goal: None,
                unit: "ms",
            }
        };
        Ok(vec![
            throughput,
            latency("propagation_p50_ms", 0.5),
            latency("propagation_p99_ms", 0.99),
        ])
    })
}
