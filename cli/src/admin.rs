//! `jarvis admin …`: the org's admin workstation.

use anyhow::{Context, Result, anyhow, bail};
use jarvis_identity::{
    AuditAction, AuditLog, CertChain, CertKind, CertTemplate, Certificate, Invite, JoinRequest,
    KeyMaterial, Name, OrgInfo, PublicKey, RequestKind, Revocation, RevocationTarget, Roles,
    SecretKey, UnixTime,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::args::{AdminCommand, InfraRole, InviteRole, RelaysCommand, RevokeArgs};
use jarvis_mesh::client::Published;

use jarvis_home::{Home, HomeKind, HomeState, KeyFile, Passphrase, encode_chain, now};
use jarvis_node::output::Output;

/// How long the first admin's certificate lasts; renewal is an admin action in a later release.
const ADMIN_CERT_SECS: u64 = 10 * 365 * 24 * 3600;

/// `admin.json`: what this workstation has done, for `members` and for the audit head.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AdminState {
    #[serde(default)]
    invites: Vec<InviteRecord>,
    #[serde(default)]
    enrolled: Vec<EnrolledRecord>,
    #[serde(default)]
    revoked: Vec<RevokedRecord>,
    #[serde(default)]
    relays: Vec<String>,
    audit_head: Option<AuditHead>,
}

#[derive(Debug, Serialize, Deserialize)]
struct InviteRecord {
    user: String,
    roles: Vec<String>,
    serial: String,
    created_at: u64,
    expires_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct EnrolledRecord {
    kind: String,
    name: String,
    id: String,
    serial: String,
    not_after: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct RevokedRecord {
    /// device | user | peer
    kind: String,
    id: String,
    reason: String,
    at: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct AuditHead {
    seq: u64,
    hash: [u8; 32],
}

const ADMIN_FILE: &str = "admin.json";
const AUDIT_FILE: &str = "audit.log";

/// An admin workstation, loaded.
struct Admin {
    home: Home,
    org: OrgInfo,
    chain: CertChain,
    state: AdminState,
}

impl Admin {
    fn load(home: Home) -> Result<Self> {
        let home_state = home.load()?;
        if home_state.kind != HomeKind::Admin {
            bail!(
                "{} is a {:?} home, not an admin workstation; pass the --home where you ran `jarvis admin init`",
                home.dir().display(),
                home_state.kind
            );
        }
        let org = home_state.org()?.context("the admin home has no org")?;
        let chain = home_state
            .chain()?
            .context("the admin home has no certificate")?;
        let state = match home.read_optional(ADMIN_FILE)? {
            Some(bytes) => serde_json::from_slice(&bytes).context("admin.json is damaged")?,
            None => AdminState::default(),
        };
        Ok(Self {
            home,
            org,
            chain,
            state,
        })
    }

    /// The org as invites and bundles should carry it: with the recorded relays.
    fn org_with_relays(&self) -> OrgInfo {
        OrgInfo {
            relays: self.state.relays.clone(),
            ..self.org.clone()
        }
    }

    fn unlock(&self) -> Result<SecretKey> {
        let passphrase = Passphrase::get("the admin key")?;
        self.unlock_with(&passphrase)
    }

    fn unlock_with(&self, passphrase: &str) -> Result<SecretKey> {
        Ok(self.home.unseal_key(KeyFile::Identity, passphrase)?.signing)
    }

    fn audit_log(&self) -> Result<AuditLog> {
        let bytes = self.home.read_optional(AUDIT_FILE)?.unwrap_or_default();
        let head = self.state.audit_head.map(|h| (h.seq, h.hash));
        AuditLog::verify(self.org.root, &bytes, head)
            .context("the audit log does not verify; run `jarvis admin audit` to see where")
    }

    /// Appends `action` to the audit log (durably), then records the new head with `state`.
    fn record(&mut self, key: &SecretKey, action: AuditAction) -> Result<()> {
        let mut log = self.audit_log()?;
        let entry = log.append(key, now(), action)?;
        self.home.append_durable(AUDIT_FILE, &entry.frame())?;
        self.state.audit_head = Some(AuditHead {
            seq: entry.seq(),
            hash: entry.hash(),
        });
        self.save()
    }

    fn save(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.state)?;
        self.home.write_atomic(ADMIN_FILE, &json, false)
    }
}

pub fn run(home: Home, out: Output, command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Init { org } => init(home, out, &org),
        AdminCommand::Invite {
            user,
            role,
            expires,
        } => invite(Admin::load(home)?, out, &user, role, expires),
        AdminCommand::Enroll {
            request,
            role,
            name,
            valid,
        } => enroll(Admin::load(home)?, out, &request, role, name, valid),
        AdminCommand::Revoke(args) => revoke(Admin::load(home)?, out, args),
        AdminCommand::Unrevoke { id, reason } => unrevoke(Admin::load(home)?, out, &id, &reason),
        AdminCommand::Revocations => revocations(&Admin::load(home)?, out),
        AdminCommand::Members => members(Admin::load(home)?, out),
        AdminCommand::Audit => audit(&Admin::load(home)?, out),
        AdminCommand::Relays(RelaysCommand::Add { multiaddr }) => {
            relays_add(Admin::load(home)?, out, &multiaddr)
        }
        AdminCommand::Relays(RelaysCommand::List) => {
            let admin = Admin::load(home)?;
            out.emit(&json!({ "relays": admin.state.relays }), || {
                if admin.state.relays.is_empty() {
                    "No relays recorded; add one with `jarvis admin relays add MULTIADDR`.".into()
                } else {
                    admin.state.relays.join("\n")
                }
            });
            Ok(())
        }
    }
}

fn init(home: Home, out: Output, org_name: &str) -> Result<()> {
    if home.exists() {
        let existing = home.load()?;
        bail!(
            "{} is already a Jarvis home ({:?}); choose an empty directory with --home",
            home.dir().display(),
            existing.kind
        );
    }
    let org_name = Name::new(org_name).map_err(|e| anyhow!("invalid org name: {e}"))?;
    let passphrase = Passphrase::new_for("the org's root and admin keys")?;
    let root = SecretKey::generate();
    let admin = SecretKey::generate();
    let at = now();
    let admin_cert = Certificate::issue(
        CertTemplate {
            kind: CertKind::Admin,
            subject: admin.public(),
            name: Name::new("admin")?,
            roles: Roles::ADMIN,
            not_before: at,
            not_after: at.saturating_add_secs(ADMIN_CERT_SECS),
            age_recipient: None,
        },
        &root,
    )?;
    let org = OrgInfo {
        name: org_name.clone(),
        root: root.public(),
        relays: Vec::new(),
    };
    let mut log = AuditLog::new(org.root);
    let entry = log
        .append(
            &root,
            at,
            AuditAction::OrgCreated {
                org: org_name.clone(),
                admin: admin_cert.clone(),
            },
        )?
        .clone();
    home.seal_key(
        KeyFile::Root,
        &KeyMaterial {
            signing: root,
            age: None,
        },
        &passphrase,
    )?;
    home.seal_key(
        KeyFile::Identity,
        &KeyMaterial {
            signing: admin,
            age: None,
        },
        &passphrase,
    )?;
    home.write_atomic(AUDIT_FILE, &entry.frame(), false)?;
    let state = AdminState {
        audit_head: Some(AuditHead {
            seq: entry.seq(),
            hash: entry.hash(),
        }),
        ..AdminState::default()
    };
    home.write_atomic(ADMIN_FILE, &serde_json::to_vec_pretty(&state)?, false)?;
    let mut home_state = HomeState::new(HomeKind::Admin);
    home_state.set_org(&org);
    home_state.chain = Some(encode_chain(&CertChain::new(vec![admin_cert])?));
    home.save(&home_state)?;

    let org_id = org.root.to_string();
    out.emit(
        &json!({ "org_id": org_id, "org": org_name.as_str(), "home": home.dir() }),
        || {
            format!(
                "Created org `{org_name}`.\n  org id: {org_id}\n  home:   {}\n\nNext: invite a user with `jarvis admin invite NAME`.",
                home.dir().display()
            )
        },
    );
    Ok(())
}

fn invite(
    mut admin: Admin,
    out: Output,
    user: &str,
    role: InviteRole,
    expires: std::time::Duration,
) -> Result<()> {
    let user = Name::new(user).map_err(|e| anyhow!("invalid user name: {e}"))?;
    let roles = match role {
        InviteRole::Member => Roles::MEMBER,
        InviteRole::Admin => Roles::MEMBER.union(Roles::ADMIN),
    };
    if expires.as_secs() == 0 {
        bail!("--expires must be at least one second");
    }
    let key = admin.unlock()?;
    let at = now();
    let expires_at = at.saturating_add_secs(expires.as_secs());
    let invite = Invite::create(
        admin.org_with_relays(),
        Some(&admin.chain),
        &key,
        user.clone(),
        roles,
        at,
        expires_at,
    )?;
    let serial = invite
        .certificate()
        .map(Certificate::serial)
        .context("invite without certificate")?;
    admin.record(
        &key,
        AuditAction::Invited {
            user: user.clone(),
            roles,
            invite: serial,
            expires_at,
        },
    )?;
    admin.state.invites.push(InviteRecord {
        user: user.to_string(),
        roles: roles.names().into_iter().map(str::to_owned).collect(),
        serial: serial.to_string(),
        created_at: at.0,
        expires_at: expires_at.0,
    });
    admin.save()?;
    let token = invite.to_token();
    out.note(&format!(
        "Invite for `{user}` ({}), valid until {expires_at}. Give it to {user} privately; on their first device they run:\n  jarvis join <token>",
        roles.names().join("+")
    ));
    out.emit(
        &json!({
            "token": token,
            "expires_at": expires_at.to_string(),
            "expires_at_unix": expires_at.0,
            "user": user.as_str(),
            "serial": serial.to_string(),
        }),
        || token.clone(),
    );
    Ok(())
}

fn enroll(
    mut admin: Admin,
    out: Output,
    request: &str,
    role: Option<InfraRole>,
    name: Option<String>,
    valid: std::time::Duration,
) -> Result<()> {
    let request = JoinRequest::from_token(request).context("the enrolment request is not valid")?;
    let (kind, label) = match request.kind() {
        RequestKind::Relay => (CertKind::Relay, InfraRole::Relay),
        RequestKind::Gpu => (CertKind::Gpu, InfraRole::Gpu),
        RequestKind::Device => bail!(
            "this is a device's pairing request: approve it on one of the user's devices with `jarvis devices approve`"
        ),
    };
    if let Some(role) = role.filter(|r| *r != label) {
        bail!(
            "the request asks to be a {}, not a {:?}; check you pasted the right request",
            request.kind().as_str(),
            role
        );
    }
    let name = name
        .map(|n| Name::new(&n))
        .transpose()
        .map_err(|e| anyhow!("invalid name: {e}"))?;
    let key = admin.unlock()?;
    let bundle = request.enroll(
        &admin.org_with_relays(),
        &key,
        Some(&admin.chain),
        name,
        now(),
        valid.as_secs(),
    )?;
    let cert = bundle.chain.leaf().context("empty bundle")?.clone();
    admin.record(
        &key,
        AuditAction::Enrolled {
            kind,
            name: cert.name().clone(),
            peer: cert.subject(),
            serial: cert.serial(),
        },
    )?;
    admin.state.enrolled.push(EnrolledRecord {
        kind: kind.as_str().into(),
        name: cert.name().to_string(),
        id: cert.subject().to_string(),
        serial: cert.serial().to_string(),
        not_after: cert.not_after().0,
    });
    admin.save()?;
    let token = bundle.to_token();
    out.note(&format!(
        "Enrolled {kind} `{}` ({}). Install this bundle on it with `{} install <bundle>`:",
        cert.name(),
        cert.subject(),
        if kind == CertKind::Relay {
            "jarvis-relay"
        } else {
            "jarvis gpu"
        }
    ));
    out.emit(
        &json!({ "bundle": token, "peer_id": cert.subject().to_string(), "kind": kind.as_str() }),
        || token.clone(),
    );
    Ok(())
}

fn parse_id(id: &str) -> Result<PublicKey> {
    id.parse::<PublicKey>().map_err(|e| anyhow!("{e}"))
}

fn revoke(mut admin: Admin, out: Output, args: RevokeArgs) -> Result<()> {
    let (target, kind, id) = match (&args.target.device, &args.target.user, &args.target.peer) {
        (Some(device), None, None) => (
            RevocationTarget::Key(parse_id(device)?),
            "device",
            device.trim().to_owned(),
        ),
        (None, Some(user), None) => (
            RevocationTarget::User(Name::new(user).map_err(|e| anyhow!("invalid user name: {e}"))?),
            "user",
            user.clone(),
        ),
        (None, None, Some(peer)) => (
            RevocationTarget::Key(parse_id(peer)?),
            "peer",
            peer.trim().to_owned(),
        ),
        _ => bail!("name exactly one of --device, --user or --peer"),
    };
    if let RevocationTarget::Key(key) = &target {
        if *key == admin.org.root {
            bail!("the org root cannot be revoked; to retire an org, stop using its root key");
        }
        let own = admin.chain.leaf().map(Certificate::subject);
        if Some(*key) == own && !args.force {
            bail!(
                "{id} is this workstation's own admin key, the org's only admin here: revoking it leaves nobody able to manage the org. Pass --force if that is what you want"
            );
        }
    }
    let key = admin.unlock()?;
    let at = now();
    // The reason stays with the admins (the audit log, admin.json): the record that travels to
    // every device and relay says only what is revoked, by whom and when.
    let record = Revocation::issue(target.clone(), "", at, Some(&admin.chain), &key)?;
    let mut set = admin.home.revocations(&admin.org.root)?;
    let already = set.iter().any(|r| *r.target() == target);
    set.insert(record)?;
    admin.home.save_revocations(&set)?;
    admin.record(
        &key,
        AuditAction::Revoked {
            target,
            reason: args.reason.clone(),
        },
    )?;
    admin.state.revoked.push(RevokedRecord {
        kind: kind.into(),
        id: id.clone(),
        reason: args.reason.clone(),
        at: at.0,
    });
    admin.save()?;
    let summary = format!(
        "Revoked {kind} {id}{}.",
        if already {
            " (it was already revoked)"
        } else {
            ""
        }
    );
    publish_and_report(
        &admin,
        &key,
        &set,
        out,
        json!({ "revoked": id, "kind": kind }),
        &summary,
    );
    Ok(())
}

/// `jarvis admin unrevoke ID`: the org root cancels one revocation record (a wrongful one, or one
/// a fired admin slipped in before the firing reached everyone). Signed with the root key, which
/// only the workstation that ran `jarvis admin init` holds.
fn unrevoke(mut admin: Admin, out: Output, id: &str, reason: &str) -> Result<()> {
    let wanted = hex::decode(id.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .with_context(|| {
            format!("`{id}` is not a revocation id (64 hex digits, as `jarvis admin revocations` shows them)")
        })?;
    let mut set = admin.home.revocations(&admin.org.root)?;
    let Some(record) = set.iter().find(|r| r.id() == wanted).cloned() else {
        bail!("no revocation {id} is known here; `jarvis admin revocations` lists those that are");
    };
    if let RevocationTarget::Record(_) = record.target() {
        bail!("{id} is itself a cancellation; cancellations cannot be undone");
    }
    if !admin.home.has_key(KeyFile::Root) {
        bail!(
            "this workstation does not hold the org root key; run the command where `jarvis admin init` created the org"
        );
    }
    let passphrase = Passphrase::get("the org's root key")?;
    let root = admin.home.unseal_key(KeyFile::Root, &passphrase)?.signing;
    let at = now();
    let target = RevocationTarget::Record(wanted);
    set.insert(Revocation::issue(target.clone(), "", at, None, &root)?)?;
    admin.home.save_revocations(&set)?;
    admin.record(
        &root,
        AuditAction::Revoked {
            target,
            reason: reason.to_owned(),
        },
    )?;
    let key = admin.unlock_with(&passphrase)?;
    let summary = format!(
        "Cancelled the revocation of {} ({}).",
        record.target(),
        record.describe()
    );
    publish_and_report(
        &admin,
        &key,
        &set,
        out,
        json!({ "cancelled": id.trim(), "target": record.target().to_string() }),
        &summary,
    );
    Ok(())
}

/// `jarvis admin revocations`: every record held, and whether it is in force.
fn revocations(admin: &Admin, out: Output) -> Result<()> {
    let set = admin.home.revocations(&admin.org.root)?;
    let rows: Vec<serde_json::Value> = set
        .iter()
        .map(|r| {
            json!({
                "id": hex::encode(r.id()),
                "target": r.target().to_string(),
                "reason": reason_of(admin, r),
                "at": r.revoked_at().0,
                "signer": r.signer().map_or_else(|| "org root".to_owned(), |k| k.to_string()),
                "in_force": set.in_force(r),
            })
        })
        .collect();
    out.emit(&json!({ "revocations": rows }), || {
        if rows.is_empty() {
            return "No revocations.".to_owned();
        }
        set.iter()
            .map(|r| {
                let reason = reason_of(admin, r);
                format!(
                    "{}  {}  revoked at {}{}{}",
                    hex::encode(r.id()),
                    r.target(),
                    r.revoked_at(),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    },
                    if set.in_force(r) {
                        ""
                    } else {
                        "  (not in force)"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// Why a record was made: the record itself carries no reason (older ones may), so it is looked
/// up in what this workstation did.
fn reason_of(admin: &Admin, record: &Revocation) -> String {
    if !record.reason().is_empty() {
        return record.reason().to_owned();
    }
    let id = match record.target() {
        RevocationTarget::Key(key) => key.to_string(),
        RevocationTarget::User(name) => name.to_string(),
        _ => return String::new(),
    };
    admin
        .state
        .revoked
        .iter()
        .find(|r| r.id == id && r.at == record.revoked_at().0)
        .map(|r| r.reason.clone())
        .unwrap_or_default()
}

/// Pushes `set` to every recorded relay and prints `summary`, where it reached, and what failed.
fn publish_and_report(
    admin: &Admin,
    key: &SecretKey,
    set: &jarvis_identity::RevocationSet,
    out: Output,
    mut json: serde_json::Value,
    summary: &str,
) {
    let published = publish_to_relays(admin, key, set);
    let accepted: Vec<&str> = published
        .iter()
        .filter(|(_, p)| *p == Published::Accepted)
        .map(|(a, _)| a.as_str())
        .collect();
    let failed: Vec<String> = published
        .iter()
        .filter(|(_, p)| *p != Published::Accepted)
        .map(|(a, p)| match p {
            Published::Refused(reason) => format!("{a}: refused: {reason}"),
            Published::Unreachable(e) => format!("{a}: {e}"),
            Published::Accepted => a.clone(),
        })
        .collect();
    if let Some(fields) = json.as_object_mut() {
        fields.insert("revocations".into(), json!(set.len()));
        fields.insert("published_to_relays".into(), json!(!accepted.is_empty()));
        fields.insert("relays".into(), json!(accepted));
        fields.insert("relays_failed".into(), json!(failed));
    }
    out.emit(&json, || {
        let reach = if !accepted.is_empty() {
            format!(
                "Published to {} relay(s): connected devices get it now, and the revoked are disconnected.",
                accepted.len()
            )
        } else if admin.state.relays.is_empty() {
            "No relays recorded (`jarvis admin relays add MULTIADDR`): it reaches devices when they next meet one that knows it.".to_owned()
        } else {
            "No relay could be reached; run the command again when one is up (it is idempotent).".to_owned()
        };
        let failed = if failed.is_empty() {
            String::new()
        } else {
            format!("\nNot reached: {}", failed.join("; "))
        };
        format!("{summary}\nRecorded in this admin home and the audit log. {reach}{failed}")
    });
}

/// Talks to every recorded relay as this admin (its key, and its hello with `set`): `call`
/// does the talking; if it cannot start, each relay gets `failed(reason)`.
fn with_relays<T, F>(
    admin: &Admin,
    key: &jarvis_identity::SecretKey,
    set: &jarvis_identity::RevocationSet,
    call: impl FnOnce(libp2p::identity::Keypair, Vec<u8>, Vec<libp2p::Multiaddr>) -> F,
    failed: impl Fn(String) -> T,
) -> Vec<(String, T)>
where
    F: std::future::Future<Output = Result<Vec<(libp2p::Multiaddr, T)>, String>>,
{
    let relays: Vec<libp2p::Multiaddr> = admin
        .state
        .relays
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    if relays.is_empty() {
        return Vec::new();
    }
    // To the org's own relays, pinned by their ids: with the revocations, which is what
    // publishing is for.
    let hello =
        jarvis_identity::hello::Hello::new(admin.chain.clone(), set).encode(&admin.org.root);
    let outcome = key
        .to_libp2p_keypair()
        .map_err(|e| e.to_string())
        .and_then(|keypair| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(call(keypair, hello, relays.clone()))
        });
    match outcome {
        Ok(results) => results
            .into_iter()
            .map(|(a, r)| (a.to_string(), r))
            .collect(),
        Err(e) => relays
            .iter()
            .map(|a| (a.to_string(), failed(e.clone())))
            .collect(),
    }
}

/// How long an admin command waits for the relays.
const RELAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives the org's relays this admin's revocation set (after its hello): each relay
/// merges it, disconnects the revoked, and pushes it to every connected peer.
fn publish_to_relays(
    admin: &Admin,
    key: &jarvis_identity::SecretKey,
    set: &jarvis_identity::RevocationSet,
) -> Vec<(String, Published)> {
    with_relays(
        admin,
        key,
        set,
        |keypair, hello, relays| async move {
            jarvis_mesh::client::publish_revocations(
                keypair,
                hello,
                set.encode(),
                &relays,
                RELAY_TIMEOUT,
            )
            .await
        },
        Published::Unreachable,
    )
}

#[derive(Debug, Serialize)]
struct Member {
    kind: &'static str,
    name: String,
    id: String,
    user: String,
    status: &'static str,
    /// Whether a relay has it connected now (devices and GPU peers the relays report).
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<bool>,
    /// When a relay last admitted it (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
}

/// An invite claim, as a relay reported it.
#[derive(Debug, Serialize)]
struct ClaimSeen {
    relay: String,
    #[serde(flatten)]
    claim: jarvis_mesh::directory::Claim,
}

/// Asks the org's relays for the members they have admitted and the invite claims they saw.
fn ask_relays_for_members(
    admin: &Admin,
    key: &SecretKey,
    set: &jarvis_identity::RevocationSet,
) -> Vec<(
    String,
    Result<jarvis_mesh::directory::MembersReport, String>,
)> {
    with_relays(
        admin,
        key,
        set,
        |keypair, hello, relays| async move {
            jarvis_mesh::client::ask_members(keypair, hello, &relays, RELAY_TIMEOUT).await
        },
        Err,
    )
}

/// Records in the audit log the claims not recorded yet (the same claim reported by several
/// relays, or asked for again, is recorded once).
fn audit_claims(admin: &mut Admin, key: &SecretKey, claims: &[ClaimSeen]) -> Result<usize> {
    let log = admin.audit_log()?;
    let mut known: Vec<(jarvis_identity::Serial, PublicKey, bool)> = log
        .entries()
        .iter()
        .filter_map(|e| match e.action() {
            AuditAction::InviteClaimed {
                invite,
                device,
                accepted,
                ..
            } => Some((*invite, *device, *accepted)),
            _ => None,
        })
        .collect();
    let mut recorded = 0;
    for seen in claims {
        let c = &seen.claim;
        let parsed = (|| -> Result<AuditAction> {
            let serial = hex::decode(&c.invite)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .context("an invite serial that is not 16 bytes of hex")?;
            Ok(AuditAction::InviteClaimed {
                invite: jarvis_identity::Serial(serial),
                user: Name::new(&c.user)?,
                user_key: parse_id(&c.user_key)?,
                device: parse_id(&c.device)?,
                device_name: Name::new(&c.device_name)?,
                accepted: c.accepted,
                relay: seen.relay.clone(),
            })
        })();
        let action = match parsed {
            Ok(action) => action,
            Err(e) => {
                tracing::warn!(relay = %seen.relay, error = %e, "a relay reported a claim that does not parse");
                continue;
            }
        };
        let AuditAction::InviteClaimed {
            invite,
            device,
            accepted,
            ..
        } = &action
        else {
            continue;
        };
        let id = (*invite, *device, *accepted);
        if known.contains(&id) {
            continue;
        }
        known.push(id);
        admin.record(key, action)?;
        recorded += 1;
    }
    Ok(recorded)
}

/// Turns each invite's first claim (the earliest any relay saw) into a record signed by this
/// admin that every device checks: any other user made with that invite is then refused by the
/// org's devices too, not only by relays that saw both claims. A relay's report is not trusted:
/// the claim is signed only if the chain it carries shows the invite certifying that user key.
/// Returns how many claims were signed (and published).
fn sign_claims(admin: &mut Admin, key: &SecretKey, claims: &[ClaimSeen]) -> Result<usize> {
    let mut set = admin.home.revocations(&admin.org.root)?;
    let mut first: std::collections::BTreeMap<&str, &jarvis_mesh::directory::Claim> =
        std::collections::BTreeMap::new();
    for seen in claims.iter().filter(|seen| seen.claim.accepted) {
        let claim = &seen.claim;
        first
            .entry(claim.invite.as_str())
            .and_modify(|held| {
                if (claim.at, &claim.user_key) < (held.at, &held.user_key) {
                    *held = claim;
                }
            })
            .or_insert(claim);
    }
    let at = now();
    let mut signed = Vec::new();
    for claim in first.into_values() {
        let Some((invite, user_key)) = checked_claim(&admin.org.root, claim) else {
            tracing::warn!(invite = %claim.invite, "a relay reported a claim its chain does not show; not signed");
            continue;
        };
        if set.claim_of(invite).is_some() {
            continue;
        }
        let target = RevocationTarget::Claim { invite, user_key };
        set.insert(Revocation::issue(
            target.clone(),
            "",
            at,
            Some(&admin.chain),
            key,
        )?)?;
        signed.push(target);
    }
    if signed.is_empty() {
        return Ok(0);
    }
    admin.home.save_revocations(&set)?;
    for target in &signed {
        admin.record(
            key,
            AuditAction::Revoked {
                target: target.clone(),
                reason: String::new(),
            },
        )?;
    }
    for (relay, published) in publish_to_relays(admin, key, &set) {
        if published != Published::Accepted {
            tracing::warn!(%relay, ?published, "signed claims not published there yet");
        }
    }
    Ok(signed.len())
}

/// The invite and user key a reported claim's chain proves (signatures and nesting from our
/// root, the invite certifying exactly the user key reported), or `None`.
fn checked_claim(
    root: &PublicKey,
    claim: &jarvis_mesh::directory::Claim,
) -> Option<(jarvis_identity::Serial, PublicKey)> {
    let chain = CertChain::decode(&hex::decode(&claim.chain).ok()?).ok()?;
    chain.verify_structure(root, None).ok()?;
    let (invite, _, user_key) = jarvis_mesh::directory::invite_of(&chain)?;
    (invite.to_string() == claim.invite && user_key.to_string() == claim.user_key)
        .then_some((invite, user_key))
}

fn members(mut admin: Admin, out: Output) -> Result<()> {
    let set = admin.home.revocations(&admin.org.root)?;
    let at = now();
    let mut members: Vec<Member> = Vec::new();
    for invite in &admin.state.invites {
        if members
            .iter()
            .any(|m| m.kind == "user" && m.name == invite.user)
        {
            continue;
        }
        let revoked = Name::new(&invite.user).is_ok_and(|n| set.is_user_revoked(&n));
        members.push(Member {
            kind: "user",
            name: invite.user.clone(),
            id: invite.user.clone(),
            user: invite.user.clone(),
            status: if revoked { "revoked" } else { "active" },
            online: None,
            last_seen: None,
        });
    }
    for peer in &admin.state.enrolled {
        let revoked = parse_id(&peer.id).is_ok_and(|k| set.is_key_revoked(&k));
        members.push(Member {
            kind: if peer.kind == "relay" { "relay" } else { "gpu" },
            name: peer.name.clone(),
            id: peer.id.clone(),
            user: String::new(),
            status: if revoked {
                "revoked"
            } else if UnixTime(peer.not_after) < at {
                "expired"
            } else {
                "active"
            },
            online: None,
            last_seen: None,
        });
    }
    // Devices are known to the org through its relays: each reports who it has admitted and
    // which invites were claimed (a second claim of one invite is refused there).
    let mut claims: Vec<ClaimSeen> = Vec::new();
    let mut unreached: Vec<String> = Vec::new();
    let mut claims_signed = 0;
    if !admin.state.relays.is_empty() {
        let key = admin.unlock()?;
        for (relay, report) in ask_relays_for_members(&admin, &key, &set) {
            let report = match report {
                Ok(report) => report,
                Err(e) => {
                    unreached.push(format!("{relay}: {e}"));
                    continue;
                }
            };
            for seen in report.members {
                let kind = match seen.kind.as_str() {
                    "device" => "device",
                    "gpu" => "gpu",
                    "relay" => "relay",
                    _ => continue,
                };
                let revoked = parse_id(&seen.id).is_ok_and(|k| set.is_key_revoked(&k))
                    || Name::new(&seen.user).is_ok_and(|u| set.is_user_revoked(&u));
                if let Some(m) = members.iter_mut().find(|m| m.id == seen.id) {
                    m.online = Some(m.online.unwrap_or(false) || seen.online);
                    m.last_seen = m.last_seen.max(Some(seen.last_seen));
                    if m.name.is_empty() {
                        m.name = seen.name;
                        m.user = seen.user;
                    }
                    continue;
                }
                members.push(Member {
                    kind,
                    name: seen.name,
                    id: seen.id,
                    user: seen.user,
                    status: if revoked { "revoked" } else { "active" },
                    online: Some(seen.online),
                    last_seen: Some(seen.last_seen),
                });
            }
            claims.extend(report.claims.into_iter().map(|claim| ClaimSeen {
                relay: relay.clone(),
                claim,
            }));
        }
        audit_claims(&mut admin, &key, &claims)?;
        claims_signed = sign_claims(&mut admin, &key, &claims)?;
    }
    // Until a relay has seen them, the admin knows the devices it has revoked.
    for revoked in admin.state.revoked.iter().filter(|r| r.kind == "device") {
        if members.iter().any(|m| m.id == revoked.id) {
            continue;
        }
        members.push(Member {
            kind: "device",
            name: String::new(),
            id: revoked.id.clone(),
            user: String::new(),
            status: "revoked",
            online: None,
            last_seen: None,
        });
    }
    for problem in &unreached {
        tracing::warn!("relay not reached: {problem}");
    }
    out.emit(
        &json!({
            "members": members,
            "claims": claims,
            "claims_signed": claims_signed,
            "relays_unreached": unreached,
        }),
        || {
            if members.is_empty() {
                return "No members yet; invite one with `jarvis admin invite NAME`.".into();
            }
            let mut text = format!(
                "{:<7} {:<8} {:<20} {:<12} ID\n",
                "KIND", "STATUS", "NAME", "USER"
            );
            for m in &members {
                let name = match m.online {
                    Some(true) => format!("{} (online)", m.name),
                    _ => m.name.clone(),
                };
                text.push_str(&format!(
                    "{:<7} {:<8} {:<20} {:<12} {}\n",
                    m.kind, m.status, name, m.user, m.id
                ));
            }
            if !claims.is_empty() {
                text.push_str("\nInvite claims (as the relays saw them):\n");
                for c in &claims {
                    let c = &c.claim;
                    text.push_str(&format!(
                        "  invite {}…: user `{}` from device `{}` {}\n",
                        c.invite.get(..8).unwrap_or(&c.invite),
                        c.user,
                        c.device_name,
                        if c.accepted {
                            "(claimed it)"
                        } else {
                            "REFUSED: claimed a second time with another user key; revoke the user if the token leaked"
                        }
                    ));
                }
            }
            if !unreached.is_empty() {
                text.push_str(&format!(
                    "\nNot reached (devices they know are not listed): {}\n",
                    unreached.join("; ")
                ));
            }
            text.trim_end().to_owned()
        },
    );
    Ok(())
}

fn audit(admin: &Admin, out: Output) -> Result<()> {
    let bytes = admin.home.read_optional(AUDIT_FILE)?.unwrap_or_default();
    let head = admin.state.audit_head.map(|h| (h.seq, h.hash));
    match AuditLog::verify(admin.org.root, &bytes, head) {
        Ok(log) => {
            let entries: Vec<_> = log
                .entries()
                .iter()
                .map(|e| {
                    json!({
                        "seq": e.seq(),
                        "at": e.at().to_string(),
                        "actor": e.actor().to_string(),
                        "action": e.action().kind(),
                        "description": e.action().to_string(),
                        "verified": true,
                    })
                })
                .collect();
            out.emit(&json!({ "entries": entries, "verified": true }), || {
                let mut text = String::new();
                for e in log.entries() {
                    text.push_str(&format!("#{:<4} {}  {}\n", e.seq(), e.at(), e.action()));
                }
                text.push_str(&format!(
                    "Verified: {} entries, signatures and hash chain intact.",
                    log.entries().len()
                ));
                text
            });
            Ok(())
        }
        Err(e) => {
            out.emit(
                &json!({ "entries": [], "verified": false, "error": e.to_string() }),
                String::new,
            );
            Err(anyhow!(e)).context("the audit log does NOT verify: it was altered or damaged")
        }
    }
}

fn relays_add(mut admin: Admin, out: Output, multiaddr: &str) -> Result<()> {
    let addr: multiaddr::Multiaddr = multiaddr.parse().map_err(|e| {
        anyhow!(
            "`{multiaddr}` is not a multiaddr ({e}); e.g. /dns/relay.example.org/udp/4001/quic-v1"
        )
    })?;
    let addr = addr.to_string();
    if addr.len() > jarvis_identity::enrol::MAX_RELAY_ADDR_BYTES {
        bail!("the relay address is too long");
    }
    if admin.state.relays.contains(&addr) {
        out.emit(&json!({ "relays": admin.state.relays }), || {
            format!("{addr} is already recorded.")
        });
        return Ok(());
    }
    if admin.state.relays.len() >= jarvis_identity::enrol::MAX_RELAYS {
        bail!(
            "an org carries at most {} relay addresses",
            jarvis_identity::enrol::MAX_RELAYS
        );
    }
    let key = admin.unlock()?;
    admin.state.relays.push(addr.clone());
    admin.record(
        &key,
        AuditAction::RelayAdded {
            address: addr.clone(),
        },
    )?;
    out.emit(&json!({ "relays": admin.state.relays }), || {
        format!("Recorded relay {addr}; new invites and bundles carry it.")
    });
    Ok(())
}
