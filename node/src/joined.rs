//! What a home records when it joins an org or pairs: the device that approved it (its
//! sponsor), the sibling it was paired with (both in `devices.json`, [`crate::siblings`]), and
//! the report of who it now is. Shared by `jarvis join` (with an invite or a pairing code) and
//! the pairing a running device shows.

use anyhow::{Context, Result};
use jarvis_identity::enrol::{Bundle, Sponsor};
use jarvis_identity::{CertChain, Name, OrgInfo};
use serde_json::json;

use crate::home::{Home, now};
use crate::output::Output;

/// Records the device `chain` certifies as a sibling of this one (`devices.json`), so every
/// conversation key, those of what was written before included, is wrapped to it before the two
/// ever meet; and tells the running node, if any, to share them now.
pub fn record_sibling(home: &Home, out: Output, chain: &CertChain) -> Result<()> {
    let Some(leaf) = chain.leaf() else {
        return Ok(());
    };
    let Some(recipient) = leaf.age_recipient().filter(|r| !r.is_empty()) else {
        out.note(&format!(
            "note: `{}` has no encryption key in its certificate, so conversations cannot be shared with it",
            leaf.name()
        ));
        return Ok(());
    };
    crate::siblings::record(home, leaf.subject(), recipient, leaf.name().as_str())?;
    let name = leaf.name();
    out.note(&match crate::siblings::tell_running_node(home) {
        Ok(Some(answer)) => format!(
            "Shared {} conversation(s) with `{name}`: it reads them, and what you write from now on, through your org's relay even while this device is off.",
            answer.get("documents").and_then(serde_json::Value::as_u64).unwrap_or(0)
        ),
        Ok(None) => format!(
            "Your conversations are shared with `{name}` when `jarvis up` next runs here; what you write from now on is shared with it as you write."
        ),
        Err(e) => format!("note: {e:#}"),
    });
    Ok(())
}

/// The device that approved this one, as the bundle names it, checked against the org and this
/// home's revocations (`Bundle::check_sponsor`: the same user key, a valid device, not this
/// one). Called before anything is installed, so a bundle naming a device that does not check
/// out is refused whole; `None` for a bundle from an older device, which names none.
pub fn checked_sponsor(home: &Home, bundle: &Bundle) -> Result<Option<Sponsor>> {
    let set = home.revocations(&bundle.org.root)?;
    bundle.check_sponsor(now(), &set).context(
        "cannot use this bundle: it names a device that approved it, but that device does not check out",
    )
}

/// On a new device, once joined: records the device that approved it, so what this device
/// writes is readable there before they meet. No node runs on a home that has just joined: the
/// node reads the record at its first start.
pub fn record_sponsor(home: &Home, out: Output, sponsor: Option<Sponsor>) -> Result<()> {
    let Some(sponsor) = sponsor else {
        return Ok(());
    };
    crate::siblings::record(
        home,
        sponsor.key,
        &sponsor.age_recipient,
        sponsor.name.as_str(),
    )?;
    out.note(&format!(
        "What you write here is shared with `{}`, the device that approved this one.",
        sponsor.name
    ));
    Ok(())
}

pub fn report_joined(home: &Home, out: Output, org: &OrgInfo, chain: &CertChain) -> Result<()> {
    let set = home.revocations(&org.root)?;
    let verified = chain.verify(&org.root, now(), &set)?;
    let user = verified
        .user
        .as_ref()
        .map(Name::to_string)
        .unwrap_or_default();
    out.emit(
        &json!({
            "org_id": org.root.to_string(),
            "org": org.name.as_str(),
            "user": user,
            "device_id": verified.subject.to_string(),
            "device_name": verified.name.as_str(),
            "kind": verified.kind.as_str(),
        }),
        || {
            format!(
                "Joined org `{}` as {} `{}`.\n  {} id: {}\n  org id:    {}",
                org.name, verified.kind, verified.name, verified.kind, verified.subject, org.root
            )
        },
    );
    Ok(())
}
