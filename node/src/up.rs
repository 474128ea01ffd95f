//! `jarvis up`: run the node.
//!
//! With no org joined, the node runs in personal mode: it creates a one-person org whose root,
//! user and device keys all live in this home, so a single user needs no admin. The node unlocks
//! its identity, starts the local API and the mesh ([`crate::node`]), and runs until Ctrl-C (or
//! SIGTERM). Voice and inference join this loop as they are built.

use anyhow::{Context, Result, bail};
use jarvis_identity::{
    CertChain, CertKind, CertTemplate, Certificate, DeviceKeys, KeyMaterial, Name, OrgInfo, Roles,
    SecretKey,
};
use serde_json::json;
use zeroize::Zeroizing;

use crate::api;
use crate::home::{Home, HomeKind, HomeState, KeyFile, Passphrase, encode_chain, now};
use crate::host_name;
use crate::node::{COMMAND_QUEUE, Node, NodeConfig, NodeIdentity};
use crate::output::Output;
use crate::shutdown::Shutdown;
use tokio::sync::{mpsc, watch};

/// What `jarvis up` runs with (the CLI's `UpArgs`, without the parsing).
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Start no voice pipeline (typed and API input only).
    pub no_voice: bool,
    /// The microphone to listen to (default: the system's).
    pub mic: Option<String>,
    /// Where the local API listens (loopback only).
    pub api: std::net::SocketAddr,
    /// Addresses to listen on for peers (empty: QUIC and TCP on every interface, any port).
    pub listen: Vec<libp2p::Multiaddr>,
    /// Peers to dial directly, redialled with backoff.
    pub peer: Vec<libp2p::Multiaddr>,
    /// Do not look for the user's devices with mDNS.
    pub no_mdns: bool,
    /// In personal mode, the user name for the new one-person org (default: $USER).
    pub user: Option<String>,
    /// An admin home on this machine, for the UI's admin screen.
    pub admin_home: Option<std::path::PathBuf>,
}

/// How long a personal org's user certificate lasts; the device renews it itself.
const PERSONAL_CERT_SECS: u64 = 10 * 365 * 24 * 3600;

pub fn run(home: Home, out: Output, args: UpConfig) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(up(home, out, args))
}

async fn up(home: Home, out: Output, args: UpConfig) -> Result<()> {
    // A new personal org was just sealed with a passphrase: do not ask for it twice.
    let (state, new_passphrase) = if home.exists() {
        (home.load()?, None)
    } else {
        let (state, passphrase) = create_personal(&home, out, args.user.as_deref())?;
        (state, Some(passphrase))
    };
    match state.kind {
        HomeKind::Device => {}
        HomeKind::Admin => bail!(
            "{} is an admin workstation; run the node from a device home (another --home)",
            home.dir().display()
        ),
        HomeKind::Gpu => bail!(
            "{} is a GPU peer's home; run it with `jarvis gpu up`",
            home.dir().display()
        ),
        HomeKind::Relay => bail!(
            "{} is a relay's home; run it with `jarvis-relay up`",
            home.dir().display()
        ),
    }
    let (Some(org), Some(chain)) = (state.org()?, state.chain()?) else {
        bail!(
            "this home is waiting for its pairing bundle: install it with `jarvis join <bundle>` first"
        );
    };
    let passphrase = match new_passphrase {
        Some(passphrase) => passphrase,
        None => Passphrase::get("this device's keys")?,
    };
    let keys = home.unseal_key(KeyFile::Identity, &passphrase)?;
    let revocations = home.revocations(&org.root)?;
    let verified = chain
        .verify(&org.root, now(), &revocations)
        .context("this device's certificate is not valid")?;
    if verified.subject != keys.signing.public() {
        bail!("this home's key does not match its certificate; the home is damaged");
    }
    let age = keys
        .age
        .context("this home's key file has no encryption identity; the home is damaged")?;
    let user = verified
        .user
        .clone()
        .context("this device's certificate names no user")?;
    let user_key = verified
        .user_key
        .context("this device's certificate names no user")?;
    let identity = NodeIdentity {
        org: org.clone(),
        chain,
        device_key: keys.signing,
        age,
        user: user.clone(),
        user_key,
    };
    let listen = if args.listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
            "/ip4/0.0.0.0/tcp/0".parse()?,
        ]
    } else {
        args.listen.clone()
    };
    let config = NodeConfig {
        listen,
        peers: args.peer.clone(),
        mdns: !args.no_mdns,
    };
    let mut shutdown = Shutdown::install()?;
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_voice = stop_rx.clone();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let voice_metrics = metrics.clone();
    let (events, _) = tokio::sync::broadcast::channel(crate::node::EVENT_QUEUE);
    let settings = crate::settings::Settings::load(&home)?;
    let engine = crate::llm::start_engine(metrics.engine.clone());
    let stream = libp2p_stream::Behaviour::new();
    let offload = crate::offload::Offload::new(
        stream.new_control(),
        settings.offload,
        crate::llm::model_bytes(),
    );
    let voice_state = std::sync::Arc::new(crate::voice_state::Voice::new(
        events.clone(),
        !args.no_voice,
        &settings,
    ));
    let ui = std::sync::Arc::new(crate::ui_state::UiState::new(
        home.dir().to_path_buf(),
        args.admin_home.clone(),
        passphrase.clone(),
        voice_state.clone(),
        events.clone(),
    ));
    let asking = crate::ask::Asking::new(commands_tx.clone(), engine.clone(), offload.clone());
    let (api_addr, server) = api::serve(
        &home,
        args.api,
        api::Parts {
            commands: commands_tx,
            metrics: metrics.clone(),
            events: events.clone(),
            asking: asking.clone(),
            stop: stop_rx.clone(),
            ui,
        },
    )
    .await?;
    let node = Node::new(
        home.clone(),
        identity,
        &config,
        api_addr.to_string(),
        metrics,
        events,
        crate::node::Answering {
            engine: engine.clone(),
            offload: offload.clone(),
            stream,
        },
    )?;
    let loads = tokio::spawn(offload.clone().watch_loads(stop_rx));
    let peer_id = node.peer_id();
    let server = tokio::spawn(server);
    let voice = (!args.no_voice).then(|| {
        tokio::spawn(crate::voice_loop::run(
            args.mic.clone(),
            voice_metrics.clone(),
            voice_state.clone(),
            asking.clone(),
            stop_rx_voice.clone(),
        ))
    });
    let model_line = match engine.wait_ready(std::time::Duration::from_secs(10)).await {
        jarvis_inference::supervisor::EngineState::Ready { .. } => {
            format!("  model:  {} (local, ready)\n", engine.model_name())
        }
        jarvis_inference::supervisor::EngineState::Failed(problem) => {
            format!("  model:  unavailable: {problem}\n")
        }
        _ => format!("  model:  {} (loading)\n", engine.model_name()),
    };
    tracing::info!(%peer_id, org = %org.name, %user, personal = state.personal, "node up");
    out.emit(
        &json!({
            "event": "up",
            "device_id": peer_id.to_string(),
            "org_id": org.root.to_string(),
            "user": user.as_str(),
            "personal": state.personal,
            "api": api_addr.to_string(),
            "voice": !args.no_voice,
            "model": crate::llm::model_status(&engine),
        }),
        || {
            format!(
                "Jarvis node up{}.\n  device: {} `{}`\n  user:   {}\n  org:    {} ({})\n  api:    http://{api_addr} (token: `jarvis token`)\n  ui:     `jarvis ui` opens it in your browser (or run `jarvis-desktop`)\n{model_line}{}Press Ctrl-C to stop.",
                if state.personal { " in personal mode" } else { "" },
                peer_id,
                verified.name,
                user,
                org.name,
                org.root,
                if args.no_voice { "" } else { "  voice:  say \"hey jarvis\" (the log says why if there is no microphone or model)\n" }
            )
        },
    );
    let result = node.run(commands_rx, &mut shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(voice) = voice {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), voice).await;
    }
    let _ = server.await;
    let _ = loads.await;
    engine.shutdown().await;
    crate::local_api::forget(&home);
    result?;
    out.emit(&json!({ "event": "stopped" }), || {
        "Stopped cleanly.".to_owned()
    });
    Ok(())
}

/// Creates a one-person org in `home`: root, user and device keys, all sealed here.
fn create_personal(
    home: &Home,
    out: Output,
    user: Option<&str>,
) -> Result<(HomeState, Zeroizing<String>)> {
    let user = user
        .map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "me".to_owned());
    let user = Name::new(&user).context("invalid user name")?;
    let device_name = Name::new(&host_name()).or_else(|_| Name::new("my-device"))?;
    out.note(&format!(
        "No org joined in {}: creating a personal one-person org for `{user}`.",
        home.dir().display()
    ));
    let passphrase = Passphrase::new_for("this device's keys")?;
    let at = now();
    let root = SecretKey::generate();
    let user_key = SecretKey::generate();
    let device_key = SecretKey::generate();
    let age_identity = jarvis_identity::age::x25519::Identity::generate();
    let org = OrgInfo {
        name: Name::new(&format!("personal-{user}")).or_else(|_| Name::new("personal"))?,
        root: root.public(),
        relays: Vec::new(),
    };
    let user_cert = Certificate::issue(
        CertTemplate {
            kind: CertKind::User,
            subject: user_key.public(),
            name: user,
            roles: Roles::MEMBER.union(Roles::ADMIN),
            not_before: at,
            not_after: at.saturating_add_secs(PERSONAL_CERT_SECS),
            age_recipient: None,
        },
        &root,
    )?;
    let user_chain = CertChain::new(vec![user_cert])?;
    let device_cert = jarvis_identity::enrol::certify_device(
        &user_key,
        &user_chain,
        &DeviceKeys {
            key: device_key.public(),
            name: &device_name,
            age_recipient: &age_identity.to_public().to_string(),
        },
        at,
    )?;
    let device_chain = user_chain.extend(device_cert)?;
    home.seal_key(
        KeyFile::Root,
        &KeyMaterial {
            signing: root,
            age: None,
        },
        &passphrase,
    )?;
    home.seal_key(
        KeyFile::User,
        &KeyMaterial {
            signing: user_key,
            age: None,
        },
        &passphrase,
    )?;
    home.seal_key(
        KeyFile::Identity,
        &KeyMaterial {
            signing: device_key,
            age: Some(age_identity),
        },
        &passphrase,
    )?;
    let mut state = HomeState::new(HomeKind::Device);
    state.set_org(&org);
    state.chain = Some(encode_chain(&device_chain));
    state.user_chain = Some(encode_chain(&user_chain));
    state.personal = true;
    home.save(&state)?;
    Ok((state, passphrase))
}
