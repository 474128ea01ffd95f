//! A home: the directory that holds one device's, admin workstation's, relay's or GPU peer's
//! keys, certificates and state (`--home`, `JARVIS_HOME`, or the platform data directory).
//!
//! ```text
//! home.json           public state: what this home is, its org, its certificate chains
//! keys/identity.age   this home's signing key (and a device's age identity), sealed
//! keys/user.age       the user's key, on the device that redeemed the invite
//! keys/root.age       the org root key, on the admin workstation (or a personal node)
//! revocations         the revocation set this home knows (jarvis_identity encoding)
//! admin.json          admin workstation only: invites, enrolments, relays, audit head
//! audit.log           admin workstation only: the signed audit log
//! ```
//!
//! Every file is replaced atomically (write to a temporary file, fsync, rename, fsync the
//! directory), so a crash leaves the old or the new version, never half of one. Secret files are
//! created with mode 0600.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use jarvis_identity::sealed::{self, DEFAULT_WORK_FACTOR, KeyMaterial, MIN_WORK_FACTOR};
use jarvis_identity::{
    Bundle, CertChain, JoinRequest, Name, OrgInfo, PublicKey, RequestKind, RevocationSet,
    SecretKey, UnixTime,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const STATE_VERSION: u32 = 1;

/// What a home is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HomeKind {
    Admin,
    Device,
    Relay,
    Gpu,
}

/// `home.json`: the public state of a home. Binary values are hex of their canonical encodings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HomeState {
    pub version: u32,
    pub kind: HomeKind,
    /// Present once the home belongs to an org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// This home's own chain (admin, device, relay or GPU certificate at the leaf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// The user's chain, on the device that holds the user key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_chain: Option<String>,
    /// A request made by this home and not yet answered with a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_request: Option<String>,
    /// A personal node: its own one-person org.
    #[serde(default)]
    pub personal: bool,
    /// Devices this device certified, so `jarvis devices` can list them.
    #[serde(default)]
    pub approved_devices: Vec<ApprovedDevice>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovedDevice {
    pub id: String,
    pub name: String,
    pub approved_at: u64,
}

impl HomeState {
    pub fn new(kind: HomeKind) -> Self {
        Self {
            version: STATE_VERSION,
            kind,
            org: None,
            chain: None,
            user_chain: None,
            pending_request: None,
            personal: false,
            approved_devices: Vec::new(),
        }
    }

    pub fn org(&self) -> Result<Option<OrgInfo>> {
        self.org
            .as_deref()
            .map(|hex_org| {
                OrgInfo::decode(&hex::decode(hex_org).context("org is not hex")?)
                    .context("home.json holds a malformed org")
            })
            .transpose()
    }

    pub fn set_org(&mut self, org: &OrgInfo) {
        self.org = Some(hex::encode(org.encode()));
    }

    pub fn chain(&self) -> Result<Option<CertChain>> {
        decode_chain(self.chain.as_deref(), "chain")
    }

    pub fn user_chain(&self) -> Result<Option<CertChain>> {
        decode_chain(self.user_chain.as_deref(), "user_chain")
    }
}

fn decode_chain(field: Option<&str>, what: &str) -> Result<Option<CertChain>> {
    field
        .map(|h| {
            CertChain::decode(&hex::decode(h).with_context(|| format!("{what} is not hex"))?)
                .with_context(|| format!("home.json holds a malformed {what}"))
        })
        .transpose()
}

pub fn encode_chain(chain: &CertChain) -> String {
    hex::encode(chain.encode())
}

/// Which sealed key file.
#[derive(Debug, Clone, Copy)]
pub enum KeyFile {
    /// The home's own signing key.
    Identity,
    User,
    Root,
}

impl KeyFile {
    fn file_name(self) -> &'static str {
        match self {
            Self::Identity => "identity.age",
            Self::User => "user.age",
            Self::Root => "root.age",
        }
    }
}

/// An opened home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The home at `dir`, or the platform default.
    pub fn locate(dir: Option<PathBuf>) -> Result<Self> {
        let dir = match dir {
            Some(dir) => dir,
            None => directories::ProjectDirs::from("org", "Jarvis", "jarvis")
                .context("no home directory found; pass --home DIR or set JARVIS_HOME")?
                .data_dir()
                .to_path_buf(),
        };
        Ok(Self { dir })
    }

    /// The home is this user's alone (mode 0700): other local users cannot list it or read
    /// what is in it (names, devices, the API's address), whatever the umask (#20, low).
    fn make_private(&self) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(&self.dir)
                .with_context(|| format!("reading {}", self.dir.display()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("making {} private", self.dir.display()))?;
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("home.json")
    }

    pub fn exists(&self) -> bool {
        self.state_path().exists()
    }

    /// The state, or a clear error if this directory is not a home yet.
    pub fn load(&self) -> Result<HomeState> {
        let path = self.state_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} is not a Jarvis home yet: run `jarvis admin init`, `jarvis join TOKEN` or `jarvis up` first",
                self.dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: HomeState = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged", path.display()))?;
        if state.version != STATE_VERSION {
            bail!(
                "{} was written by another version of Jarvis (state version {}); upgrade Jarvis",
                path.display(),
                state.version
            );
        }
        Ok(state)
    }

    pub fn load_or_new(&self, kind: HomeKind) -> Result<HomeState> {
        if self.exists() {
            self.load()
        } else {
            Ok(HomeState::new(kind))
        }
    }

    pub fn save(&self, state: &HomeState) -> Result<()> {
        let json = serde_json::to_vec_pretty(state).context("encoding home.json")?;
        self.write_atomic("home.json", &json, false)
    }

    /// Replaces `name` (relative to the home) atomically and durably.
    pub fn write_atomic(&self, name: &str, bytes: &[u8], secret: bool) -> Result<()> {
        let path = self.dir.join(name);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        self.make_private()?;
        let tmp = parent.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        {
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            if secret {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            #[cfg(not(unix))]
            let _ = secret;
            let mut file = options
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        sync_dir(&parent);
        Ok(())
    }

    /// Appends to `name` and fsyncs before returning.
    pub fn append_durable(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("appending to {}", path.display()))?;
        sync_dir(&self.dir);
        Ok(())
    }

    pub fn read_optional(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn seal_key(&self, which: KeyFile, keys: &KeyMaterial, passphrase: &str) -> Result<()> {
        let sealed = sealed::seal(keys, passphrase, work_factor()?)?;
        self.write_atomic(&format!("keys/{}", which.file_name()), &sealed, true)
    }

    pub fn has_key(&self, which: KeyFile) -> bool {
        self.dir.join("keys").join(which.file_name()).exists()
    }

    pub fn unseal_key(&self, which: KeyFile, passphrase: &str) -> Result<KeyMaterial> {
        let path = self.dir.join("keys").join(which.file_name());
        let bytes = fs::read(&path)
            .with_context(|| format!("reading {} (this home has no such key)", path.display()))?;
        sealed::unseal(&bytes, passphrase)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// The revocations this home knows, verified against `root`.
    pub fn revocations(&self, root: &PublicKey) -> Result<RevocationSet> {
        match self.read_optional("revocations")? {
            None => Ok(RevocationSet::new(*root)),
            Some(bytes) => RevocationSet::decode(root, &bytes)
                .context("the stored revocation set is damaged or forged"),
        }
    }

    pub fn save_revocations(&self, set: &RevocationSet) -> Result<()> {
        self.write_atomic("revocations", &set.encode(), false)
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) {
    // Makes a rename or a new file durable. Best effort: some filesystems refuse to fsync a
    // directory, and the data itself was already synced.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) {}

/// scrypt work factor for new key files: age's interactive default, or `JARVIS_KDF_WORK_FACTOR`.
/// A release build takes it only to make key files *harder* to crack: a lower one (down to 10)
/// is for test builds, so that whoever can set a user's environment cannot weaken their keys
/// (#20, low).
fn work_factor() -> Result<u8> {
    let Ok(v) = std::env::var("JARVIS_KDF_WORK_FACTOR") else {
        return Ok(DEFAULT_WORK_FACTOR);
    };
    let n: u8 = v
        .parse()
        .with_context(|| format!("JARVIS_KDF_WORK_FACTOR={v} is not a number"))?;
    if n < MIN_WORK_FACTOR {
        bail!("JARVIS_KDF_WORK_FACTOR={n} is below the minimum of {MIN_WORK_FACTOR}");
    }
    if n < DEFAULT_WORK_FACTOR && !cfg!(debug_assertions) {
        return Ok(DEFAULT_WORK_FACTOR);
    }
    Ok(n)
}

/// This machine's name (`/etc/hostname`, `HOSTNAME`, `COMPUTERNAME`), a default name for the
/// device, relay or GPU peer a home is.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
}

/// The current time as the identity library wants it.
pub fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// Where a passphrase comes from: `JARVIS_PASSPHRASE_FILE` (a file holding it: a systemd
/// credential, a container secret), else `JARVIS_PASSPHRASE`, else a prompt on the terminal.
pub struct Passphrase;

/// The variable naming a file that holds the passphrase.
pub const PASSPHRASE_FILE_ENV: &str = "JARVIS_PASSPHRASE_FILE";

impl Passphrase {
    /// The passphrase from `JARVIS_PASSPHRASE_FILE` or `JARVIS_PASSPHRASE`, if either is set.
    /// A file's one trailing newline is not part of it (`echo pw > file` works).
    fn from_env() -> Result<Option<Zeroizing<String>>> {
        if let Some(path) = std::env::var_os(PASSPHRASE_FILE_ENV) {
            let text = Zeroizing::new(std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading the passphrase from {} ({PASSPHRASE_FILE_ENV})",
                    Path::new(&path).display()
                )
            })?);
            let line = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text);
            return Ok(Some(Zeroizing::new(line.to_owned())));
        }
        Ok(std::env::var("JARVIS_PASSPHRASE").ok().map(Zeroizing::new))
    }

    /// For opening existing keys.
    pub fn get(purpose: &str) -> Result<Zeroizing<String>> {
        if let Some(p) = Self::from_env()? {
            return Ok(p);
        }
        Self::prompt(&format!("Passphrase to unlock {purpose}: "))
    }

    /// For sealing new keys: asks twice on a terminal.
    pub fn new_for(purpose: &str) -> Result<Zeroizing<String>> {
        if let Some(p) = Self::from_env()? {
            if p.is_empty() {
                bail!("the passphrase (JARVIS_PASSPHRASE or its file) is empty; choose one");
            }
            return Ok(p);
        }
        let first = Self::prompt(&format!("New passphrase for {purpose}: "))?;
        if first.is_empty() {
            bail!("the passphrase is empty; choose one");
        }
        let second = Self::prompt("Repeat the passphrase: ")?;
        if first != second {
            bail!("the passphrases do not match; try again");
        }
        Ok(first)
    }

    fn prompt(text: &str) -> Result<Zeroizing<String>> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            bail!(
                "a passphrase is needed but there is no terminal to ask on: set JARVIS_PASSPHRASE_FILE (a file holding it) or JARVIS_PASSPHRASE"
            );
        }
        rpassword::prompt_password(text)
            .map(Zeroizing::new)
            .context("reading the passphrase")
    }
}

/// Refuses to join a home that already belongs to an org.
pub fn ensure_not_joined(home: &Home, state: &HomeState) -> Result<()> {
    if let Some(org) = state.org()? {
        bail!(
            "{} already belongs to org `{}` ({}); a home is one device of one org. Use another --home to join a different org",
            home.dir().display(),
            org.name,
            org.root
        );
    }
    Ok(())
}

/// The command that makes a request of `kind`, for messages.
pub fn request_command(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Device => "jarvis devices request",
        RequestKind::Gpu => "jarvis gpu request",
        RequestKind::Relay => "jarvis-relay request",
    }
}

/// Makes this home's key and an enrolment request of `kind` (a device's pairing request, or a
/// relay's or GPU peer's request to an admin). Idempotent: asked again, it returns the same
/// request. Returns the request's token, and whether it had been made before.
pub fn make_request(home: &Home, kind: RequestKind, name: Name) -> Result<(String, bool)> {
    let home_kind = match kind {
        RequestKind::Device => HomeKind::Device,
        RequestKind::Gpu => HomeKind::Gpu,
        RequestKind::Relay => HomeKind::Relay,
    };
    let mut state = home.load_or_new(home_kind)?;
    ensure_not_joined(home, &state)?;
    if state.kind != home_kind {
        bail!(
            "{} is a {:?} home, not a {:?}",
            home.dir().display(),
            state.kind,
            home_kind
        );
    }
    if let Some(existing) = &state.pending_request {
        return Ok((existing.clone(), true));
    }
    let passphrase = Passphrase::new_for("this machine's keys")?;
    let key = SecretKey::generate();
    let age = (kind == RequestKind::Device).then(jarvis_identity::age::x25519::Identity::generate);
    let recipient = age.as_ref().map(|a| a.to_public().to_string());
    let request = JoinRequest::create(kind, &key, name, recipient, now());
    home.seal_key(
        KeyFile::Identity,
        &KeyMaterial { signing: key, age },
        &passphrase,
    )?;
    let token = request.to_token();
    state.pending_request = Some(token.clone());
    home.save(&state)?;
    Ok((token, false))
}

/// Installs the bundle that answers this home's pending request of `kind`, after checking it is
/// for that request (and from the org `pinned`, when given). Returns the bundle.
pub fn install_bundle(
    home: &Home,
    token: &str,
    pinned: Option<&PublicKey>,
    kind: RequestKind,
) -> Result<Bundle> {
    let mut state = home.load().with_context(|| {
        format!(
            "a bundle answers a request made on this machine; run `{}` here first",
            request_command(kind)
        )
    })?;
    ensure_not_joined(home, &state)?;
    let request = state
        .pending_request
        .as_deref()
        .context("this home made no request, so no bundle can be for it")?;
    let request = JoinRequest::from_token(request).context("the stored request is damaged")?;
    if request.kind() != kind {
        bail!(
            "this home asked to be a {}, but the bundle is being installed as a {}",
            request.kind().as_str(),
            kind.as_str()
        );
    }
    let bundle = Bundle::from_token(token).context("cannot use this bundle")?;
    bundle
        .check_for(&request, pinned, now())
        .context("cannot use this bundle")?;
    state.set_org(&bundle.org);
    state.chain = Some(encode_chain(&bundle.chain));
    state.pending_request = None;
    home.save(&state)?;
    Ok(bundle)
}
