//! `jarvis-relay`: the org relay server. Enrolled like a GPU peer (`request`, then an admin's
//! `jarvis admin enroll`, then `install`); `up` runs it: the authentication gate, circuit relay
//! v2, and blind store-and-forward of each user's sealed changes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use jarvis_home::{Home, KeyFile, Passphrase};
use jarvis_identity::{Name, RequestKind};
use jarvis_relay::hub::Limits;
use jarvis_relay::server::{Config, Relay, RelayIdentity};
use jarvis_relay::store::StoreChoice;
use libp2p::Multiaddr;

/// The Jarvis org relay: keeps the org's devices in sync when they are never online together,
/// and connects devices that cannot reach each other. It stores only ciphertext.
#[derive(Debug, Parser)]
#[command(name = "jarvis-relay", version, max_term_width = 100)]
struct Cli {
    /// Directory holding the relay's key, certificate and store.
    #[arg(long, global = true, env = "JARVIS_RELAY_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make this relay's key and an enrolment request for an org admin
    /// (`jarvis admin enroll --request REQ`).
    Request {
        /// The relay's name in the org (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Install the bundle the admin's `jarvis admin enroll` printed.
    Install {
        /// The bundle.
        bundle: String,
    },
    /// The running relay: connections, stored bytes (per user), quota, revocations held. With
    /// a PostgreSQL store (--store, --store-file or JARVIS_RELAY_STORE), also the fleet's
    /// database: users, changes, bytes, revocations, members, and the instances listening.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Apply the PostgreSQL store's schema migrations and exit (`up` also applies them when it
    /// starts; this is for deploying the schema ahead of a fleet's rolling upgrade).
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Run the relay. Prints its peer id and addresses (JSON lines); Ctrl-C stops it cleanly.
    Up {
        /// Addresses to listen on (default: QUIC and TCP on port 4001, every interface).
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
        /// Where members reach this instance from outside (repeat for several), e.g.
        /// /dns/relay-2.example.org/udp/4001/quic-v1: listed in the directory so that devices
        /// enrolled before this instance existed learn it and spread over the fleet. Default:
        /// the addresses it listens on.
        #[arg(long, value_name = "MULTIADDR")]
        external: Vec<Multiaddr>,
        /// Bytes of sealed data stored per user.
        #[arg(long, value_name = "BYTES", default_value_t = Limits::default().quota_bytes)]
        quota: u64,
        /// Sustained bytes per second one peer may send (bursts up to 8 × this).
        #[arg(long, value_name = "BYTES", default_value_t = Limits::default().rate_bytes_per_sec)]
        rate: u64,
        /// Serve Prometheus metrics (`/metrics`) and a health check (`/health`) here, e.g.
        /// 127.0.0.1:9101.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Connections from one IP address that may wait to prove who they are at once (fresh
        /// keys are free; members already admitted never count).
        #[arg(long, value_name = "N", default_value_t = 32)]
        max_unproven_per_ip: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where users' data lives (`up`, `migrate`).
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// `sled` (embedded, in the relay's home; the default) or a PostgreSQL URL,
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, which several relay instances share. A
    /// URL with a password is better given by file (--store-file) or environment than on the
    /// command line, which other local users can read.
    #[arg(
        long,
        value_name = "STORE",
        env = "JARVIS_RELAY_STORE",
        hide_env_values = true
    )]
    store: Option<String>,
    /// Read --store from this file (a systemd credential, a container secret).
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    store_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Logs to stderr; traces to an OTLP collector when OTEL_EXPORTER_OTLP_ENDPOINT is set
    // (flushed when `telemetry` is dropped, before the process ends).
    let telemetry = jarvis_telemetry::init("jarvis-relay");
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    drop(telemetry);
    code
}

fn home(dir: Option<PathBuf>) -> Result<Home> {
    let dir = match dir {
        Some(dir) => dir,
        None => Home::locate(None)
            .context("pass --home DIR or set JARVIS_RELAY_HOME")?
            .dir()
            .join("relay"),
    };
    Home::locate(Some(dir))
}

/// `--store` / `--store-file` / `JARVIS_RELAY_STORE`, `sled` when none is given.
fn store_choice(args: StoreArgs) -> Result<StoreChoice> {
    let store = match (args.store, args.store_file) {
        (_, Some(file)) => std::fs::read_to_string(&file)
            .with_context(|| format!("reading the store from {}", file.display()))?,
        (Some(store), None) => store,
        (None, None) => "sled".to_owned(),
    };
    StoreChoice::parse(&store).map_err(|e| anyhow!("--store: {e}"))
}

fn print(json: bool, value: &serde_json::Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

fn run(cli: Cli) -> Result<()> {
    let home = home(cli.home)?;
    match cli.command {
        Command::Request { name } => {
            let name = name
                .or_else(jarvis_home::host_name)
                .unwrap_or_else(|| "relay".to_owned());
            let name = Name::new(&name).map_err(|e| anyhow!("invalid name `{name}`: {e}"))?;
            let (token, again) = jarvis_home::make_request(&home, RequestKind::Relay, name)?;
            let request = jarvis_identity::JoinRequest::from_token(&token)?;
            if !cli.json {
                if again {
                    eprintln!("This relay already made a request; here it is again.");
                }
                eprintln!(
                    "Give this request to an org admin (`jarvis admin enroll --request <request>`), then install the bundle they give you with `jarvis-relay install <bundle>`. The request:"
                );
            }
            print(
                cli.json,
                &serde_json::json!({ "request": token, "peer_id": request.key().to_string() }),
                &token,
            );
            Ok(())
        }
        Command::Install { bundle } => {
            let bundle = jarvis_home::install_bundle(&home, &bundle, None, RequestKind::Relay)?;
            let leaf = bundle
                .chain
                .leaf()
                .context("the bundle has no certificate")?;
            print(
                cli.json,
                &serde_json::json!({
                    "org": bundle.org.name.as_str(),
                    "org_id": bundle.org.root.to_string(),
                    "peer_id": leaf.subject().to_string(),
                }),
                &format!(
                    "Installed: relay `{}` of org `{}`. Start it with `jarvis-relay up`.",
                    leaf.name(),
                    bundle.org.name
                ),
            );
            Ok(())
        }
        Command::Migrate { store } => {
            let StoreChoice::Postgres(url) = store_choice(store)? else {
                bail!(
                    "migrate is for a PostgreSQL store: pass --store postgres://… (sled needs no migration)"
                );
            };
            let pg = jarvis_relay::pg::Pg::connect(&url, 1)
                .context("connecting to the PostgreSQL store")?;
            let version = pg.schema_version()?;
            print(
                cli.json,
                &serde_json::json!({ "schema_version": version }),
                &format!("the store's schema is at version {version}"),
            );
            Ok(())
        }
        Command::Status { store } => {
            let fleet = match store_choice(store)? {
                StoreChoice::Sled => None,
                StoreChoice::Postgres(url) => Some(
                    jarvis_relay::pg::Pg::connect(&url, 1)
                        .and_then(|pg| pg.fleet_status())
                        .context("reading the fleet's database")?,
                ),
            };
            let path = home.dir().join(jarvis_relay::server::STATUS_FILE);
            let local = std::fs::read(&path).with_context(|| {
                format!(
                    "no status in {}: start the relay with `jarvis-relay up` first",
                    home.dir().display()
                )
            });
            let mut status: serde_json::Value = match (local, &fleet) {
                (Ok(bytes), _) => {
                    serde_json::from_slice(&bytes).context("the status file is damaged")?
                }
                // The database alone: an operator's view from any machine that reaches it.
                (Err(_), Some(_)) => serde_json::json!({}),
                (Err(e), None) => return Err(e),
            };
            let fleet_text = fleet.as_ref().map(|f| {
                format!(
                    "fleet database {}: schema {}, {} users, {} changes, {} bytes, {} revocations, {} members, {} instances listening",
                    f["database"].as_str().unwrap_or("?"),
                    f["schema_version"],
                    f["users"],
                    f["changes"],
                    f["stored_bytes"],
                    f["revocations"],
                    f["members"],
                    f["instances_listening"],
                )
            });
            if let (Some(fleet), Some(map)) = (fleet, status.as_object_mut()) {
                map.insert("fleet".to_owned(), fleet);
            }
            let field = |name: &str| status.get(name).cloned().unwrap_or_default();
            let mut lines = Vec::new();
            if status.get("peer_id").is_some() {
                lines.push(format!(
                    "relay {}: {}\n{} connections ({} devices), {} bytes stored, {} revocations held",
                    field("peer_id").as_str().unwrap_or("?"),
                    if field("running") == true {
                        "running"
                    } else {
                        "stopped"
                    },
                    field("connections"),
                    field("devices"),
                    field("stored_bytes"),
                    field("revocations"),
                ));
            }
            lines.extend(fleet_text);
            let text = lines.join("\n");
            print(cli.json, &status, &text);
            Ok(())
        }
        Command::Up {
            listen,
            external,
            quota,
            rate,
            metrics,
            max_unproven_per_ip,
            store,
        } => {
            let store = store_choice(store)?;
            let listen = if listen.is_empty() {
                vec![
                    "/ip4/0.0.0.0/udp/4001/quic-v1".parse()?,
                    "/ip4/0.0.0.0/tcp/4001".parse()?,
                ]
            } else {
                listen
            };
            let state = home.load().context(
                "this relay is not enrolled: run `jarvis-relay request`, have an admin enroll it, then `jarvis-relay install BUNDLE`",
            )?;
            let (Some(org), Some(chain)) = (state.org()?, state.chain()?) else {
                bail!(
                    "this relay is not enrolled yet: install the bundle from `jarvis admin enroll` with `jarvis-relay install BUNDLE`"
                );
            };
            let passphrase = Passphrase::get("the relay's key")?;
            let key = home.unseal_key(KeyFile::Identity, &passphrase)?.signing;
            let revocations = home.revocations(&org.root)?;
            chain
                .verify(&org.root, jarvis_home::now(), &revocations)
                .context("this relay's certificate is not valid")?;
            let shared = std::sync::Arc::new(jarvis_relay::metrics::Metrics::new());
            let config = Config {
                metrics: std::sync::Arc::clone(&shared),
                listen,
                external,
                limits: Limits {
                    quota_bytes: quota,
                    rate_bytes_per_sec: rate,
                    // Eight seconds' worth, and at least 2 MiB: a device's first upload of its
                    // history goes at once.
                    burst_bytes: rate.saturating_mul(8).max(2 << 20),
                },
                max_unproven_per_ip,
                store,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let relay = Relay::new(
                    RelayIdentity { org, chain, key },
                    revocations,
                    home,
                    &config,
                )?;
                println!(
                    "{}",
                    serde_json::json!({ "event": "up", "peer_id": relay.peer_id().to_string() })
                );
                if let Some(address) = metrics {
                    let listener = tokio::net::TcpListener::bind(address)
                        .await
                        .with_context(|| format!("cannot serve metrics on {address}"))?;
                    let bound = listener.local_addr()?;
                    tokio::spawn(jarvis_relay::metrics::serve(listener, shared));
                    println!(
                        "{}",
                        serde_json::json!({ "event": "metrics", "address": bound.to_string() })
                    );
                }
                let mut report = |event: serde_json::Value| println!("{event}");
                relay
                    .run(
                        async {
                            let _ = tokio::signal::ctrl_c().await;
                        },
                        &mut report,
                    )
                    .await
            })?;
            println!("{}", serde_json::json!({ "event": "stopped" }));
            Ok(())
        }
    }
}
