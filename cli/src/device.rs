//! A user's device: `join`, `devices`, `whoami`, and the GPU peer's enrolment (`gpu request`,
//! `gpu install`), which follows the same request → bundle path.

use anyhow::{Context, Result, anyhow, bail};
use jarvis_identity::{
    Bundle, CertChain, CertKind, DeviceKeys, Invite, JoinRequest, KeyMaterial, Name, OrgInfo,
    PublicKey, RequestKind, SecretKey, TokenKind, UnixTime,
};
use serde_json::json;

use crate::args::{DevicesCommand, GpuCommand, JoinArgs};
use jarvis_home::{
    ApprovedDevice, Home, HomeKind, HomeState, KeyFile, Passphrase, encode_chain, now,
};
use jarvis_node::host_name;
use jarvis_node::joined::{checked_sponsor, record_sibling, record_sponsor, report_joined};
use jarvis_node::output::Output;
use jarvis_node::siblings::{SEEN_FILE, SeenDevice};

fn device_name(given: Option<String>) -> Result<Name> {
    let name = given.unwrap_or_else(host_name);
    Name::new(&name).map_err(|e| anyhow!("invalid device name `{name}`: {e}"))
}

fn parse_org_id(id: Option<&str>) -> Result<Option<PublicKey>> {
    id.map(|id| {
        id.parse::<PublicKey>()
            .map_err(|e| anyhow!("invalid --org: {e}"))
    })
    .transpose()
}

pub fn join(home: Home, out: Output, args: JoinArgs) -> Result<()> {
    let pinned = parse_org_id(args.org.as_deref())?;
    match TokenKind::sniff(&args.token) {
        Some(TokenKind::Invite) => join_with_invite(home, out, &args, pinned.as_ref()),
        Some(TokenKind::Bundle) => {
            install_bundle(home, out, &args.token, pinned.as_ref(), RequestKind::Device)
        }
        Some(TokenKind::Pairing) => {
            let name = device_name(args.device_name.clone())?;
            jarvis_node::pairing::join(&home, out, &args.token, name)
        }
        Some(TokenKind::Request) => bail!(
            "this is a join request, not an invite: approve it on a device you already have with `jarvis devices approve`"
        ),
        None => bail!(
            "this is not a Jarvis invite (jvinvite_…), pairing code (jvpair_…) or pairing bundle (jvbundle_…); copy the whole token"
        ),
    }
}

fn join_with_invite(
    home: Home,
    out: Output,
    args: &JoinArgs,
    pinned: Option<&PublicKey>,
) -> Result<()> {
    let state = home.load_or_new(HomeKind::Device)?;
    jarvis_home::ensure_not_joined(&home, &state)?;
    if state.pending_request.is_some() {
        bail!(
            "this home is waiting for a pairing bundle from one of your devices (it ran `jarvis devices request`); an invite is for a user's first device. Use a fresh --home for the invite"
        );
    }
    if state.kind != HomeKind::Device {
        bail!(
            "{} is a {:?} home, not a device",
            home.dir().display(),
            state.kind
        );
    }
    let invite = Invite::from_token(&args.token).context("cannot use this invite")?;
    let name = device_name(args.device_name.clone())?;
    let device_key = SecretKey::generate();
    let age_identity = jarvis_identity::age::x25519::Identity::generate();
    let recipient = age_identity.to_public().to_string();
    let redeemed = invite
        .redeem(
            now(),
            pinned,
            &DeviceKeys {
                key: device_key.public(),
                name: &name,
                age_recipient: &recipient,
            },
        )
        .context("cannot use this invite")?;
    let passphrase = Passphrase::new_for("this device's keys")?;
    home.seal_key(
        KeyFile::Identity,
        &KeyMaterial {
            signing: device_key,
            age: Some(age_identity),
        },
        &passphrase,
    )?;
    home.seal_key(
        KeyFile::User,
        &KeyMaterial {
            signing: redeemed.user_key,
            age: None,
        },
        &passphrase,
    )?;
    let mut state = HomeState::new(HomeKind::Device);
    state.set_org(&redeemed.org);
    state.chain = Some(encode_chain(&redeemed.device_chain));
    state.user_chain = Some(encode_chain(&redeemed.user_chain));
    home.save(&state)?;
    report_joined(&home, out, &redeemed.org, &redeemed.device_chain)
}

fn install_bundle(
    home: Home,
    out: Output,
    token: &str,
    pinned: Option<&PublicKey>,
    kind: RequestKind,
) -> Result<()> {
    let sponsor = match kind {
        RequestKind::Device => {
            let bundle = Bundle::from_token(token).context("cannot use this bundle")?;
            checked_sponsor(&home, &bundle)?
        }
        _ => None,
    };
    let bundle = jarvis_home::install_bundle(&home, token, pinned, kind)?;
    report_joined(&home, out, &bundle.org, &bundle.chain)?;
    record_sponsor(&home, out, sponsor)
}

/// Makes this home's key and a request of `kind`; prints the request. Idempotent: asked again,
/// it prints the same request.
fn make_request(home: &Home, out: Output, kind: RequestKind, name: Name) -> Result<()> {
    let (token, again) = jarvis_home::make_request(home, kind, name)?;
    if again {
        out.note("This home already made a request; here it is again.");
    }
    let request = JoinRequest::from_token(&token)?;
    out.note(&match kind {
        RequestKind::Device => "On a device you already have (the one you first joined with), run\n  jarvis devices approve <request>\nthen install what it prints here with `jarvis join <bundle>`. The request:".to_owned(),
        _ => "Give this request to an org admin (`jarvis admin enroll --request <request>`), then install the bundle they give you. The request:".to_owned(),
    });
    out.emit(
        &json!({ "request": token, "peer_id": request.key().to_string() }),
        || token.clone(),
    );
    Ok(())
}

pub fn devices(home: Home, out: Output, command: Option<DevicesCommand>) -> Result<()> {
    match command {
        None => list_devices(&home, out),
        Some(DevicesCommand::Pair { listen, expires }) => {
            jarvis_node::pairing::pair(&home, out, listen, expires)
        }
        Some(DevicesCommand::Request { device_name: name }) => {
            make_request(&home, out, RequestKind::Device, device_name(name)?)
        }
        Some(DevicesCommand::Approve { request }) => approve(&home, out, &request),
    }
}

/// A joined device's org and chain, or a clear error.
fn joined(home: &Home, state: &HomeState) -> Result<(OrgInfo, CertChain)> {
    let org = state.org()?;
    let chain = state.chain()?;
    match (org, chain) {
        (Some(org), Some(chain)) => Ok((org, chain)),
        _ if state.pending_request.is_some() => {
            bail!("this home is waiting for its bundle: install it with `jarvis join <bundle>`")
        }
        _ => bail!(
            "{} has not joined an org: run `jarvis join TOKEN` (or `jarvis up` for personal mode)",
            home.dir().display()
        ),
    }
}

fn approve(home: &Home, out: Output, request: &str) -> Result<()> {
    let mut state = home.load()?;
    let (org, chain) = joined(home, &state)?;
    let user_chain = state.user_chain()?;
    let (Some(user_chain), true) = (user_chain, home.has_key(KeyFile::User)) else {
        bail!(
            "this device does not hold your user key, so it cannot approve devices: run `jarvis devices approve` on the device you first joined with (the one that used the invite)"
        );
    };
    let request = JoinRequest::from_token(request).context("the pairing request is not valid")?;
    if request.kind() != RequestKind::Device {
        bail!(
            "this is a {} enrolment request: an org admin enrols it with `jarvis admin enroll`",
            request.kind().as_str()
        );
    }
    let passphrase = Passphrase::get("your user key")?;
    let user_key = home.unseal_key(KeyFile::User, &passphrase)?.signing;
    // The bundle names this device as the new one's sponsor, so the new device wraps what it
    // writes to this one too, before they ever meet.
    let bundle = request
        .approve_device(&org, &user_key, &user_chain, now())?
        .with_sponsor(chain);
    state.approved_devices.push(ApprovedDevice {
        id: request.key().to_string(),
        name: request.name().to_string(),
        approved_at: now().0,
    });
    home.save(&state)?;
    record_sibling(home, out, &bundle.chain)?;
    let token = bundle.to_token();
    out.note(&format!(
        "Approved `{}` ({}). On the new device run:\n  jarvis join <bundle>\nThe bundle:",
        request.name(),
        request.key()
    ));
    out.emit(
        &json!({ "bundle": token, "device_id": request.key().to_string() }),
        || token.clone(),
    );
    Ok(())
}

fn list_devices(home: &Home, out: Output) -> Result<()> {
    let state = home.load()?;
    let (org, chain) = joined(home, &state)?;
    let set = home.revocations(&org.root)?;
    let leaf = chain.leaf().context("empty chain")?;
    let status = |id: &str| match id.parse::<PublicKey>() {
        Ok(key) if set.is_key_revoked(&key) => "revoked",
        _ => "active",
    };
    // What the node has seen of the user's other devices (`peers.json`, written while it runs).
    let seen: std::collections::BTreeMap<String, SeenDevice> =
        match home.read_optional(SEEN_FILE)? {
            Some(bytes) => serde_json::from_slice(&bytes).context("peers.json is damaged")?,
            None => Default::default(),
        };
    let last_sync = |id: &str| {
        seen.get(id)
            .and_then(|d| d.last_sync)
            .map(|t| UnixTime(t).to_string())
    };
    let this_id = leaf.subject().to_string();
    let mut devices = vec![json!({
        "id": this_id,
        "name": leaf.name().as_str(),
        "status": status(&this_id),
        "last_sync": null,
        "this_device": true,
    })];
    for d in &state.approved_devices {
        devices.push(json!({
            "id": d.id,
            "name": d.name,
            "status": status(&d.id),
            "last_sync": last_sync(&d.id),
            "this_device": false,
            "approved_at": UnixTime(d.approved_at).to_string(),
        }));
    }
    // The devices this one shares conversation keys with (`devices.json`): the one that
    // approved or paired it, and those met since.
    let siblings = jarvis_node::siblings::load(home)?;
    let listed = |id: &str| id == this_id || state.approved_devices.iter().any(|a| a.id == id);
    for (key, d) in &siblings {
        let id = key.to_string();
        if listed(&id) {
            continue;
        }
        let name = if d.name.is_empty() {
            seen.get(&id).map(|s| s.name.clone()).unwrap_or_default()
        } else {
            d.name.clone()
        };
        devices.push(json!({
            "id": id,
            "name": name,
            "status": status(&id),
            "last_sync": last_sync(&id),
            "this_device": false,
        }));
    }
    for (id, d) in &seen {
        // Older nodes also recorded the org's relays there: they are not the user's devices.
        let relay = org
            .relays
            .iter()
            .any(|a| a.ends_with(&format!("/p2p/{id}")));
        if relay
            || listed(id)
            || id
                .parse::<PublicKey>()
                .is_ok_and(|k| siblings.contains_key(&k))
        {
            continue;
        }
        devices.push(json!({
            "id": id,
            "name": d.name,
            "status": status(id),
            "last_sync": last_sync(id),
            "this_device": false,
        }));
    }
    out.emit(&json!({ "devices": devices }), || {
        let mut text = format!("{:<20} {:<8} {:<21} ID\n", "NAME", "STATUS", "LAST SYNC");
        for d in &devices {
            text.push_str(&format!(
                "{:<20} {:<8} {:<21} {}{}\n",
                d["name"].as_str().unwrap_or_default(),
                d["status"].as_str().unwrap_or_default(),
                d["last_sync"].as_str().unwrap_or("never"),
                d["id"].as_str().unwrap_or_default(),
                if d["this_device"] == true {
                    "  (this device)"
                } else {
                    ""
                }
            ));
        }
        text.trim_end().to_owned()
    });
    Ok(())
}

pub fn whoami(home: Home, out: Output) -> Result<()> {
    let state = home.load()?;
    let (org, chain) = joined(&home, &state)?;
    let set = home.revocations(&org.root)?;
    let at = now();
    let leaf = chain.leaf().context("empty chain")?;
    let (status, problem) = match chain.verify(&org.root, at, &set) {
        Ok(_) => ("active", None),
        Err(e @ jarvis_identity::ChainError::Revoked { .. }) => ("revoked", Some(e.to_string())),
        Err(e @ jarvis_identity::ChainError::Expired { .. }) => ("expired", Some(e.to_string())),
        Err(e) => ("invalid", Some(e.to_string())),
    };
    let verified = chain
        .verify_structure(&org.root, None)
        .context("this home's certificate chain does not verify; the home is damaged")?;
    let user = chain
        .certs()
        .iter()
        .rev()
        .find(|c| c.kind() == CertKind::User)
        .map(|c| c.name().to_string());
    let user = match (state.kind, user) {
        (_, Some(user)) => user,
        (HomeKind::Admin, None) => leaf.name().to_string(),
        (_, None) => String::new(),
    };
    let roles = verified.roles.names();
    let expires_at = verified.expires_at;
    let value = json!({
        "org_id": org.root.to_string(),
        "org": org.name.as_str(),
        "user": user,
        "device_id": leaf.subject().to_string(),
        "device_name": leaf.name().as_str(),
        "kind": leaf.kind().as_str(),
        "roles": roles,
        "expires_at": expires_at.to_string(),
        "status": status,
        "personal": state.personal,
        "holds_user_key": home.has_key(KeyFile::User),
    });
    out.emit(&value, || {
        let mut text = format!(
            "org:        {} ({})\nuser:       {}\n{:<11} {} `{}`\nroles:      {}\nexpires:    {}\nstatus:     {}",
            org.name,
            org.root,
            if user.is_empty() { "-" } else { &user },
            format!("{}:", leaf.kind()),
            leaf.subject(),
            leaf.name(),
            if roles.is_empty() { "-".to_owned() } else { roles.join(", ") },
            expires_at,
            status
        );
        if state.personal {
            text.push_str("\nmode:       personal (a one-person org of this device)");
        }
        text
    });
    if let Some(problem) = problem {
        out.note(&format!("warning: {problem}"));
    }
    Ok(())
}

pub fn gpu(home: Home, out: Output, command: GpuCommand) -> Result<()> {
    match command {
        GpuCommand::Request { name } => {
            let name = device_name(name)?;
            make_request(&home, out, RequestKind::Gpu, name)
        }
        GpuCommand::Install { bundle } => {
            install_bundle(home, out, &bundle, None, RequestKind::Gpu)
        }
        GpuCommand::Up(args) => jarvis_node::gpu::run(home, out, args.try_into()?),
    }
}
