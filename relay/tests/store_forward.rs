//! Store-and-forward over real QUIC on loopback: a device writes while the user's other device
//! is away, goes away itself, and the other device gets everything from the relay alone; the
//! relay's files hold none of the text. Strangers are refused by the relay's gate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use jarvis_crdt::store::Store;
use serde_json::Value;

mod common;
use common::{
    Running, approve_offline, jarvis, json_ok, ok, relay_cmd, sample, say, scrape, start_relay,
    start_relay_from, start_relay_with, texts, wait_for,
};

fn start_node(home: &Path, relay: &str) -> Running {
    common::node_up(
        jarvis(home),
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--peer", relay],
    )
}

fn relay_status(home: &Path) -> Value {
    json_ok(relay_cmd(home), &["status"])
}

/// Waits until the relay's stored bytes are non-zero and stop changing (everything sent has
/// been stored); returns them.
fn settled_bytes(relay_home: &Path) -> u64 {
    settled_above(relay_home, 0)
}

/// Waits until the relay's stored bytes are above `above` and stop changing; returns them.
fn settled_above(relay_home: &Path, above: u64) -> u64 {
    let mut last = (0, Instant::now());
    wait_for("the relay to store what was sent", || {
        let bytes = relay_status(relay_home)["stored_bytes"]
            .as_u64()
            .unwrap_or(0);
        if bytes != last.0 {
            last = (bytes, Instant::now());
        }
        (bytes > above && last.1.elapsed() > Duration::from_secs(2)).then_some(bytes)
    })
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Org acme with alice's laptop (holding her user key) and the devices named in `others`,
/// paired from it, and an enrolled relay. Returns (admin, device homes, relay home).
fn org(d: &Path, others: &[&str]) -> (PathBuf, Vec<PathBuf>, PathBuf) {
    let admin = d.join("admin");
    ok(&admin, &["admin", "init", "--org", "acme"]);
    let token = ok(&admin, &["admin", "invite", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let laptop = d.join("laptop");
    ok(&laptop, &["join", &token, "--device-name", "laptop"]);
    let mut devices = vec![laptop.clone()];
    for name in others {
        let home = d.join(name);
        approve_offline(&laptop, &home, name);
        devices.push(home);
    }
    let relay_home = d.join("relay");
    common::enrol_relay(&admin, &relay_home);
    (admin, devices, relay_home)
}

#[test]
fn a_device_that_was_away_gets_everything_from_the_relay_alone_and_the_relay_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &["phone"]);
    let (laptop, phone) = (devices[0].clone(), devices[1].clone());
    let (relay, address, metrics) = start_relay(&relay_home);
    let health = reqwest::blocking::get(format!("http://{metrics}/health")).unwrap();
    assert_eq!(health.status(), 200);

    // The laptop writes while the phone is away, with the relay its only peer.
    let a = start_node(&laptop, &address);
    let secret = "the launch code is swordfish";
    let conversation = say(&laptop, &[secret]);
    let mut sent = vec![secret.to_owned()];
    for i in 0..30 {
        let text = format!("confidential note number {i}");
        say(&laptop, &[&text, "--conversation", &conversation]);
        sent.push(text);
    }
    let stored = settled_bytes(&relay_home);
    let status = relay_status(&relay_home);
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["stored_bytes_per_user"]["alice"], stored, "{status}");
    let text = scrape(&metrics);
    assert_eq!(
        sample(&text, "jarvis_relay_stored_bytes{user=\"alice\"}"),
        Some(stored as f64),
        "{text}"
    );
    assert!(
        sample(&text, "jarvis_relay_changes_stored_total").unwrap() >= 31.0,
        "{text}"
    );
    assert_eq!(sample(&text, "jarvis_relay_devices"), Some(1.0), "{text}");
    drop(a);

    // The phone comes online after the laptop left: everything comes from the relay.
    let _b = start_node(&phone, &address);
    wait_for("the phone to receive the laptop's messages", || {
        (texts(&phone, &conversation) == sent).then_some(())
    });

    // The relay never had anything readable: none of the text is in its files.
    drop(relay);
    for file in files(&relay_home) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in ["swordfish", "confidential note"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} contains {needle:?}",
                file.display()
            );
        }
    }
}

#[test]
fn a_relay_that_is_not_enrolled_says_how_to_enrol_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay_cmd(dir.path())
        .args(["up", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jarvis-relay request"), "{stderr}");
    let out = relay_cmd(dir.path())
        .args(["install", "garbage"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jarvis-relay request"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_revoked_device_is_disconnected_by_the_relay_within_5_s_and_the_others_learn_it() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, devices, relay_home) = org(dir.path(), &["phone", "tablet"]);
    let (relay, address, metrics) = start_relay(&relay_home);
    ok(&admin, &["admin", "relays", "add", &address]);
    let _nodes: Vec<Running> = devices.iter().map(|h| start_node(h, &address)).collect();
    wait_for("all three devices to be admitted", || {
        (relay_status(&relay_home)["devices"] == 3).then_some(())
    });
    let tablet_id = ok(&devices[2], &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let revoked_at = Instant::now();
    let revoked = ok(&admin, &["admin", "revoke", "--device", &tablet_id]);
    assert_eq!(revoked["published_to_relays"], true, "{revoked}");
    wait_for("the relay to drop the tablet", || {
        (relay_status(&relay_home)["devices"] == 2).then_some(())
    });
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(5), "disconnected after {took:?}");
    eprintln!("revoke → disconnected: {took:?}");
    // The other devices have the revocation without asking for it.
    for home in &devices[..2] {
        wait_for("a device to learn the revocation", || {
            (ok(home, &["status"])["revocations"] == 1).then_some(())
        });
    }
    assert_eq!(relay_status(&relay_home)["revocations"], 1);
    // The tablet keeps redialling and is refused every time.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(relay_status(&relay_home)["devices"], 2);
    let text = scrape(&metrics);
    // Once when it was let go, and again for each redial: its chain is revoked now (typed, so
    // counted as `revoked`, not as a stranger).
    assert!(
        sample(&text, "jarvis_relay_refusals_total{reason=\"revoked\"}").unwrap() >= 2.0,
        "the tablet's redials are refused: {text}"
    );
    drop(relay);
}

#[test]
fn changes_acknowledged_before_a_kill_9_survive_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &["phone"]);
    // A fixed port, so that the restarted relay is where the devices look for it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("/ip4/127.0.0.1/udp/{port}/quic-v1");
    let spawn = || {
        let mut child = relay_cmd(&relay_home)
            .args(["up", "--listen", &listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let _up = lines.next().unwrap().unwrap();
        let listening: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        (child, listening["address"].as_str().unwrap().to_owned())
    };
    let (mut relay, address) = spawn();
    let a = start_node(&devices[0], &address);
    let conversation = say(&devices[0], &["message 0"]);
    let mut sent = vec!["message 0".to_owned()];
    for i in 1..40 {
        if i == 20 {
            // Mid-burst: no clean shutdown, no flush.
            relay.kill().unwrap();
            relay.wait().unwrap();
            relay = spawn().0;
        }
        let text = format!("message {i}");
        say(&devices[0], &[&text, "--conversation", &conversation]);
        sent.push(text);
    }
    // The restarted relay (its own status, not the killed one's) has the laptop back, and
    // what the laptop sends to catch it up has been stored.
    let pid = relay.id();
    wait_for("the laptop to reconnect to the restarted relay", || {
        let status = relay_status(&relay_home);
        (status["pid"] == pid && status["devices"] == 1).then_some(())
    });
    settled_bytes(&relay_home);
    drop(a);
    let _relay = Running(relay);
    let _b = start_node(&devices[1], &address);
    wait_for("the phone to receive every message", || {
        (texts(&devices[1], &conversation) == sent).then_some(())
    });
}

#[test]
fn a_full_quota_is_refused_with_a_reason_the_device_shows() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &[]);
    let (_relay, address, metrics) = start_relay_with(&relay_home, &["--quota", "1"]);
    let _a = start_node(&devices[0], &address);
    let conversation = say(&devices[0], &["the first message fits"]);
    settled_bytes(&relay_home);
    say(
        &devices[0],
        &["the second does not", "--conversation", &conversation],
    );
    // The relay took what came while the quota was empty (the conversation's key), refuses the
    // rest, and says why;
    // the device shows it on the relay's line of `status`.
    let reason = wait_for("the device to show why the relay refused", || {
        let status = ok(&devices[0], &["status"]);
        status["peers"]
            .as_array()?
            .iter()
            .find(|p| p["role"] == "relay")
            .and_then(|p| p["last_refusal"].as_str().map(str::to_owned))
    });
    assert!(
        reason.contains("storage quota of user alice is full"),
        "{reason}"
    );
    let text = scrape(&metrics);
    assert!(
        sample(&text, "jarvis_relay_refusals_total{reason=\"quota\"}").unwrap() >= 1.0,
        "{text}"
    );
}

/// The relay's circuit service is behind its gate: a stranger asking for a reservation is
/// refused, while an enrolled device (which asks once the relay has admitted it) gets one and
/// is reachable through the relay.
#[test]
fn only_admitted_peers_get_a_circuit_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &[]);
    let (_relay, address, _) = start_relay(&relay_home);

    // A stranger: a fresh key that never says hello.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = runtime.block_on(async {
        use futures::StreamExt;
        use libp2p::swarm::SwarmEvent;
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .unwrap()
            .with_behaviour(|_, relay| relay)
            .unwrap()
            .build();
        let circuit: libp2p::Multiaddr = format!("{address}/p2p-circuit").parse().unwrap();
        swarm.listen_on(circuit).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
                Err(_) => return "no answer".to_owned(),
                Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                    return format!("reserved {address}");
                }
                Ok(SwarmEvent::ListenerClosed { reason, .. }) => {
                    return format!("closed {reason:?}");
                }
                Ok(_) => {}
            }
        }
    });
    assert!(
        outcome.starts_with("closed Err"),
        "a stranger got: {outcome}"
    );

    // An enrolled device listening through the relay gets its reservation.
    let laptop = &devices[0];
    let circuit = format!("{address}/p2p-circuit");
    let _laptop = common::node_up(jarvis(laptop), &["--listen", &circuit]);
    wait_for("the laptop's reservation on the relay", || {
        let status = ok(laptop, &["status"]);
        status["listen"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("/p2p-circuit"))
            .then_some(())
    });
}

/// Posts `count` messages to the running node at `home` through its API (no model: each is
/// saved and synced); returns the conversation.
fn post_messages(home: &Path, conversation: Option<&str>, count: usize) -> String {
    let api: Value =
        serde_json::from_slice(&std::fs::read(home.join("api.json")).unwrap()).unwrap();
    let token = std::fs::read_to_string(home.join("api-token")).unwrap();
    let client = reqwest::blocking::Client::new();
    let mut conversation = conversation.map(str::to_owned);
    for i in 0..count {
        let reply: Value = client
            .post(format!("http://{}/v1/ask", api["addr"].as_str().unwrap()))
            .bearer_auth(token.trim())
            .json(&serde_json::json!({
                "text": format!("note {i}: remember to water the plants on the balcony"),
                "conversation": conversation,
            }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        conversation = Some(reply["conversation_id"].as_str().unwrap().to_owned());
    }
    conversation.unwrap()
}

/// A long conversation is compacted: past 512 changes the device snapshots it and the relay
/// drops the history the snapshot covers, so what it stores shrinks while the conversation
/// grows; a device that was away gets all of it (snapshot, then the later changes) from the
/// relay alone.
#[test]
fn a_snapshot_replaces_the_history_it_covers_on_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &["phone"]);
    let (laptop, phone) = (devices[0].clone(), devices[1].clone());
    let (_relay, address, metrics) = start_relay(&relay_home);
    let a = start_node(&laptop, &address);
    let conversation = post_messages(&laptop, None, 500);
    // Every one of the 500 changes stored on the relay (not just a pause in a slow sync).
    wait_for("the relay to store the 500 messages", || {
        (sample(&scrape(&metrics), "jarvis_relay_changes_stored_total")? >= 500.0).then_some(())
    });
    let before = settled_bytes(&relay_home);
    post_messages(&laptop, Some(&conversation), 100);
    let after = wait_for("the relay to drop the history the snapshot covers", || {
        let bytes = relay_status(&relay_home)["stored_bytes"].as_u64().unwrap();
        (bytes < before / 2).then_some(bytes)
    });
    assert!(after > 0);
    drop(a);

    let _b = start_node(&phone, &address);
    wait_for("the phone to get all 600 messages from the relay", || {
        let texts = texts(&phone, &conversation);
        (texts.len() == 600).then_some(())
    });
    let texts = texts(&phone, &conversation);
    assert_eq!(
        texts[0],
        "note 0: remember to water the plants on the balcony"
    );
    assert_eq!(
        texts[599],
        "note 99: remember to water the plants on the balcony"
    );
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct Prober {
    identify: libp2p::identify::Behaviour,
    ping: libp2p::ping::Behaviour,
    auth: libp2p::request_response::Behaviour<jarvis_mesh::wire::Frames>,
}

/// What a peer with `key` learns from the relay at `address` in `time`: whether identify told it
/// the relay's protocols, whether a ping was answered, and whether its hello (if it says one)
/// was answered with the relay's.
fn probe(
    key: libp2p::identity::Keypair,
    hello: Option<Vec<u8>>,
    address: &str,
    time: Duration,
) -> (Option<Vec<String>>, bool, bool) {
    let (protocols, pinged, welcomed, _) = probe_timed(key, hello, address, time);
    (protocols, pinged, welcomed)
}

/// [`probe`], and how long after connecting the other side closed the connection (if it did).
fn probe_timed(
    key: libp2p::identity::Keypair,
    hello: Option<Vec<u8>>,
    address: &str,
    time: Duration,
) -> (Option<Vec<String>>, bool, bool, Option<Duration>) {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{identify, ping, request_response};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_quic()
            .with_behaviour(|key| Prober {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/probe/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_millis(300)),
                ),
                auth: jarvis_mesh::wire::behaviour(
                    jarvis_mesh::wire::AUTH_PROTOCOL,
                    jarvis_mesh::wire::MAX_AUTH_BYTES,
                    Duration::from_secs(10),
                ),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm
            .dial(address.parse::<libp2p::Multiaddr>().unwrap())
            .unwrap();
        let (mut protocols, mut pinged, mut welcomed) = (None, false, false);
        let (mut connected, mut closed) = (None, None);
        let deadline = tokio::time::Instant::now() + time;
        while let Ok(event) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            match event {
                SwarmEvent::ConnectionClosed { .. } => {
                    closed = connected.map(|at: Instant| at.elapsed());
                    break;
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    connected = Some(Instant::now());
                    if let Some(hello) = &hello {
                        swarm
                            .behaviour_mut()
                            .auth
                            .send_request(&peer_id, hello.clone());
                    }
                }
                SwarmEvent::Behaviour(ProberEvent::Identify(identify::Event::Received {
                    info,
                    ..
                })) => {
                    protocols = Some(info.protocols.iter().map(ToString::to_string).collect());
                }
                SwarmEvent::Behaviour(ProberEvent::Ping(ping::Event { result: Ok(_), .. })) => {
                    pinged = true;
                }
                SwarmEvent::Behaviour(ProberEvent::Auth(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                })) => {
                    welcomed = jarvis_identity::hello::decode_refusal(&response).is_none();
                }
                _ => {}
            }
        }
        (protocols, pinged, welcomed, closed)
    })
}

#[test]
fn identify_and_ping_answer_only_admitted_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &[]);
    let (_relay, address, _) = start_relay(&relay_home);

    // A stranger (a fresh key, no hello) learns nothing: no identify, no ping.
    let stranger = probe(
        libp2p::identity::Keypair::generate_ed25519(),
        None,
        &address,
        Duration::from_secs(4),
    );
    assert_eq!(stranger, (None, false, false), "a stranger got an answer");

    // The laptop, with its own key and chain, says hello and then gets both.
    let home = jarvis_home::Home::locate(Some(devices[0].clone())).unwrap();
    let state = home.load().unwrap();
    let chain = state.chain().unwrap().unwrap();
    let org = state.org().unwrap().unwrap();
    let key = home
        .unseal_key(jarvis_home::KeyFile::Identity, "pw")
        .unwrap()
        .signing;
    let hello =
        jarvis_identity::hello::Hello::new(chain, &jarvis_identity::RevocationSet::new(org.root))
            .encode(&org.root);
    let (protocols, pinged, welcomed) = probe(
        key.to_libp2p_keypair().unwrap(),
        Some(hello),
        &address,
        Duration::from_secs(4),
    );
    assert!(welcomed, "the relay did not answer the laptop's hello");
    let protocols = protocols.expect("no identify for an admitted device");
    assert!(
        protocols
            .iter()
            .any(|p| p == jarvis_mesh::wire::SYNC_PROTOCOL.as_ref()),
        "{protocols:?}"
    );
    assert!(pinged, "no ping answered for an admitted device");
}

/// `jarvis up` with no `--peer`: the org's relay, recorded by the admin and carried by the
/// invite or pairing bundle, is the only way it has to the user's other devices.
fn up_with_org_relays(home: &Path) -> Running {
    common::node_up(jarvis(home), &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
}

/// An org whose admin enrolled a relay, started it and recorded it, and alice's laptop joined
/// with an invite. Returns (relay, laptop home, relay home).
fn org_with_recorded_relay(d: &Path) -> (Running, PathBuf, PathBuf) {
    let admin = d.join("admin");
    ok(&admin, &["admin", "init", "--org", "acme"]);
    let relay_home = d.join("relay");
    common::enrol_relay(&admin, &relay_home);
    let (relay, address, _) = start_relay(&relay_home);
    ok(&admin, &["admin", "relays", "add", &address]);
    let token = ok(&admin, &["admin", "invite", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let laptop = d.join("laptop");
    ok(&laptop, &["join", &token, "--device-name", "laptop"]);
    (relay, laptop, relay_home)
}

/// The names `jarvis devices` lists on `home`.
fn device_names(home: &Path) -> Vec<String> {
    let mut names: Vec<String> = ok(home, &["devices"])["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Issue #28, as a new user meets it: alice pairs her desk machine over the network
/// (`jarvis devices pair` on the laptop, whose node is running; `jarvis join <code>` on the
/// desk), the desk is switched off before it ever starts, alice asks on the laptop and closes
/// it; the desk, started alone with the relay, shows the conversation, and the one the laptop
/// had before the desk was paired. Then the other way: the desk writes while the laptop is off,
/// and the laptop reads it from the relay alone.
#[test]
fn a_device_paired_over_the_network_reads_its_siblings_writing_through_the_relay_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_relay, laptop, relay_home) = org_with_recorded_relay(d);
    let desk = d.join("desk");

    let a = up_with_org_relays(&laptop);
    let before = say(&laptop, &["written before the desk was paired"]);
    let stored = settled_above(&relay_home, 0);

    // Pairing over the network, with the laptop's node running all along.
    let mut pair = jarvis(&laptop)
        .args([
            "devices",
            "pair",
            "--json",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(pair.stdout.take().unwrap()).lines();
    let shown: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let code = shown["code"].as_str().unwrap().to_owned();
    let joined = ok(&desk, &["join", &code, "--device-name", "desk"]);
    assert_eq!(joined["user"], "alice");
    let paired: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(paired["joined"], joined["device_id"]);
    assert!(pair.wait().unwrap().success());
    // Each side lists the other at once, before they ever met.
    assert_eq!(device_names(&desk), ["desk", "laptop"]);
    assert_eq!(device_names(&laptop), ["desk", "laptop"]);

    // The desk is off. Alice asks on the laptop (whose node learned of the desk without a
    // restart), the relay stores it, and she closes the laptop.
    let after = say(&laptop, &["what is the capital of France"]);
    let stored = settled_above(&relay_home, stored);
    drop(a);

    // The desk starts with only the relay: both conversations are readable there.
    let b = up_with_org_relays(&desk);
    wait_for("the desk to read the laptop's conversations", || {
        (texts(&desk, &after) == ["what is the capital of France"]
            && texts(&desk, &before) == ["written before the desk was paired"])
        .then_some(())
    });

    // The other way: the desk writes while the laptop is off; the laptop reads it.
    let from_desk = say(&desk, &["written on the desk while the laptop was closed"]);
    settled_above(&relay_home, stored);
    drop(b);
    let _a = up_with_org_relays(&laptop);
    wait_for("the laptop to read the desk's conversation", || {
        (texts(&laptop, &from_desk) == ["written on the desk while the laptop was closed"])
            .then_some(())
    });
}

/// The offline path (`jarvis devices request` / `approve` / `join <bundle>`) with the laptop's
/// node stopped while the desk is approved: the laptop's node shares the keys of what it wrote
/// before when it next starts, and the desk, which recorded the laptop from its bundle, writes
/// to it from its first run. The two are never online together.
#[test]
fn a_device_approved_offline_gets_the_history_and_writes_to_its_sponsor_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_relay, laptop, relay_home) = org_with_recorded_relay(d);

    let a = up_with_org_relays(&laptop);
    let before = say(&laptop, &["the laptop's history"]);
    let stored = settled_above(&relay_home, 0);
    drop(a);

    let desk = d.join("desk");
    approve_offline(&laptop, &desk, "desk");
    assert_eq!(device_names(&desk), ["desk", "laptop"]);

    // The desk's first run, with the laptop off: what it writes is wrapped to the laptop too.
    let b = up_with_org_relays(&desk);
    let from_desk = say(&desk, &["the desk's first words"]);
    let stored = settled_above(&relay_home, stored);
    drop(b);

    // The laptop starts: it reads the desk's words, and shares its history's keys with the desk.
    let a = up_with_org_relays(&laptop);
    wait_for("the laptop to read the desk's conversation", || {
        (texts(&laptop, &from_desk) == ["the desk's first words"]).then_some(())
    });
    settled_above(&relay_home, stored);
    drop(a);

    let _b = up_with_org_relays(&desk);
    wait_for("the desk to read the laptop's history", || {
        (texts(&desk, &before) == ["the laptop's history"]).then_some(())
    });
}

/// Two devices the laptop approved (each knows the laptop, neither the other) and that never
/// connect to each other: each learns the other from the relay's directory, where the relay
/// lists its user's devices with their certificate chains, checks the chain itself, and shares
/// its conversations. Before, the tablet could never read what the phone wrote; and with
/// writers restricted to a device's known siblings (#20, finding 1) it would not even take the
/// phone's changes.
#[test]
fn devices_that_never_met_learn_each_other_from_the_relays_directory_and_read_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &["phone", "tablet"]);
    let (phone, tablet) = (devices[1].clone(), devices[2].clone());
    assert_eq!(device_names(&tablet), ["laptop", "tablet"]);
    let (_relay, address, _) = start_relay(&relay_home);
    let _p = start_node(&phone, &address);
    let conversation = say(&phone, &["written on the phone"]);
    let _t = start_node(&tablet, &address);
    wait_for("the tablet to read the phone's conversation", || {
        (texts(&tablet, &conversation) == ["written on the phone"]).then_some(())
    });
    // And back: the tablet's reply reaches the phone.
    say(
        &tablet,
        &["and the tablet answers", "--conversation", &conversation],
    );
    wait_for("the phone to read the tablet's reply", || {
        (texts(&phone, &conversation).len() == 2).then_some(())
    });
    assert!(device_names(&phone).contains(&"tablet".to_owned()));
}

/// #20, finding 5 (in part): a stranger that connects to a device's node and says nothing is
/// disconnected once the mesh's hello deadline has passed (as at the relay); before, the node
/// kept it for as long as the stranger liked.
#[test]
fn a_node_disconnects_a_peer_that_says_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, _) = org(dir.path(), &[]);
    let _node = common::node_up(
        jarvis(&devices[0]),
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    );
    let address = wait_for("the node's listen address", || {
        ok(&devices[0], &["status"])["listen"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let deadline = jarvis_mesh::admission::AUTH_DEADLINE;
    let (_, _, welcomed, closed) = probe_timed(
        libp2p::identity::Keypair::generate_ed25519(),
        None,
        &address,
        deadline + Duration::from_secs(10),
    );
    assert!(!welcomed);
    let closed = closed.expect("the node kept a silent stranger's connection");
    assert!(
        closed >= deadline - Duration::from_secs(1),
        "closed after {closed:?}, before the deadline"
    );
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct SyncProber {
    sync: libp2p::request_response::Behaviour<jarvis_mesh::wire::Frames>,
}

/// A stranger (a fresh key, no hello) that sends a sync request of `bytes` bytes as soon as it
/// connects: whether anything answered it within `time`.
fn stranger_sync_answered(address: &str, bytes: usize, time: Duration) -> bool {
    use futures::StreamExt;
    use libp2p::request_response::{Event, Message};
    use libp2p::swarm::SwarmEvent;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(
            libp2p::identity::Keypair::generate_ed25519(),
        )
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| SyncProber {
            sync: jarvis_mesh::wire::behaviour(
                jarvis_mesh::wire::SYNC_PROTOCOL,
                jarvis_mesh::wire::MAX_SYNC_BYTES,
                Duration::from_secs(60),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
        swarm
            .dial(address.parse::<libp2p::Multiaddr>().unwrap())
            .unwrap();
        let deadline = tokio::time::Instant::now() + time;
        while let Ok(event) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&peer_id, vec![7u8; bytes]);
                }
                SwarmEvent::Behaviour(SyncProberEvent::Sync(Event::Message {
                    message: Message::Response { .. },
                    ..
                })) => return true,
                SwarmEvent::ConnectionClosed { .. } => return false,
                _ => {}
            }
        }
        false
    })
}

/// #20, finding 5: before a peer is admitted, only its hello is read. A stranger's sync request
/// (here 1 MiB, at once, with no hello) was read whole and answered by the node and refused with
/// a reason by the relay; now neither reads it at all (the stream is held, unread, until the
/// peer is admitted or goes), and the stranger is disconnected at the hello deadline.
#[test]
fn a_strangers_sync_request_is_not_even_read_by_a_node_or_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &[]);
    let (_relay, relay_address, _) = start_relay(&relay_home);
    let _node = common::node_up(
        jarvis(&devices[0]),
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    );
    let node_address = wait_for("the node's listen address", || {
        ok(&devices[0], &["status"])["listen"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    for (who, address) in [("the node", &node_address), ("the relay", &relay_address)] {
        assert!(
            !stranger_sync_answered(address, 1 << 20, Duration::from_secs(4)),
            "{who} read and answered a stranger's sync request"
        );
    }
}

/// The same store-and-forward with the relay's data in PostgreSQL (`--store-file`, as a secret
/// is given to a service): the phone gets everything from the relay alone, the database holds no
/// plaintext, and `/health` tells a load balancer when the database is gone.
#[test]
fn a_relay_on_postgres_forwards_everything_and_its_database_reads_nothing() {
    let cluster = common::postgres::Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &["phone"]);
    let (laptop, phone) = (devices[0].clone(), devices[1].clone());
    let secret_file = dir.path().join("store-url");
    std::fs::write(&secret_file, cluster.url("postgres")).unwrap();
    let (relay, address, metrics) = start_relay_with(
        &relay_home,
        &["--store-file", secret_file.to_str().unwrap()],
    );
    let health: Value = reqwest::blocking::get(format!("http://{metrics}/health"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["database"], true, "{health}");

    let a = start_node(&laptop, &address);
    let secret = "the launch code is swordfish";
    let conversation = say(&laptop, &[secret]);
    let mut sent = vec![secret.to_owned()];
    for i in 0..10 {
        let text = format!("confidential note number {i}");
        say(&laptop, &[&text, "--conversation", &conversation]);
        sent.push(text);
    }
    let stored = settled_bytes(&relay_home);
    drop(a);
    let _b = start_node(&phone, &address);
    wait_for(
        "the phone to receive the laptop's messages from postgres",
        || (texts(&phone, &conversation) == sent).then_some(()),
    );

    // What the relay stored is in the database, as ciphertext only, and none of it in its home
    // (which keeps only the roster).
    let org: jarvis_identity::PublicKey = ok(&laptop, &["whoami"])["org_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let pg = jarvis_relay::pg::Pg::connect(&cluster.url("postgres"), 1)
        .unwrap()
        .for_org(&org);
    let alice: String = "alice".bytes().map(|b| format!("{b:02x}")).collect();
    let store = pg.store(&format!("user/{alice}/"));
    assert_eq!(store.stored_bytes().unwrap(), stored);
    let mut changes = 0;
    for doc in store.docs().unwrap() {
        for (actor, top) in store.vector(doc).unwrap().iter() {
            for seq in 1..=*top {
                let Some(change) = store.change(doc, actor, seq).unwrap() else {
                    continue;
                };
                changes += 1;
                let bytes = change.encode();
                for needle in ["swordfish", "confidential note"] {
                    assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
                }
            }
        }
    }
    assert!(changes >= 11, "{changes} changes in the database");

    cluster.stop();
    let health = reqwest::blocking::get(format!("http://{metrics}/health")).unwrap();
    assert_eq!(health.status(), 503, "the database is down");
    cluster.resume();
    wait_for("the relay's health to come back", || {
        let health = reqwest::blocking::get(format!("http://{metrics}/health")).ok()?;
        (health.status() == 200).then_some(())
    });
    drop(relay);
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the relay exports its spans (a device's hello, its
/// sync requests) over OTLP/HTTP, as `jarvis-relay`, to a receiver built on OpenTelemetry's own
/// protobuf definitions; and flushes them when it stops.
#[test]
fn a_relay_exports_its_spans_to_an_otlp_collector() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/support/otlp_receiver.py");
    let mut receiver = std::process::Command::new("python3")
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut spans = BufReader::new(receiver.stdout.take().unwrap());
    let receiver = Running(receiver);
    let mut port = String::new();
    spans.read_line(&mut port).unwrap();
    assert!(
        port.trim().parse::<u16>().is_ok(),
        "the OTLP receiver did not start (scripts/test.sh installs opentelemetry-proto): {port:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_, devices, relay_home) = org(dir.path(), &[]);
    let mut cmd = relay_cmd(&relay_home);
    cmd.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{}", port.trim()),
    )
    .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let (relay, address, _) = start_relay_from(cmd, &[]);
    let node = start_node(&devices[0], &address);
    say(&devices[0], &["a note for the relay"]);
    settled_bytes(&relay_home);
    drop(node);
    drop(relay);
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in spans.lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    while !["hello", "sync"]
        .iter()
        .all(|name| seen.iter().any(|s| s["name"] == *name))
    {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the relay's spans did not arrive: {seen:#?}"));
        seen.push(serde_json::from_str(&line).unwrap());
    }
    drop(receiver);
    assert!(
        seen.iter().all(|s| s["service"] == "jarvis-relay"),
        "{seen:#?}"
    );
}
