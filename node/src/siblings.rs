//! `devices.json`: the user's other devices ("siblings") that this device wraps conversation
//! keys to.
//!
//! Every document key this device makes or holds is wrapped (age) to itself and to each sibling
//! recorded here, so a sibling reads what this device writes through a relay alone, before the
//! two are ever online together. An entry is written by whoever learns of a sibling:
//!
//! - on the approving device, `jarvis devices approve` and `jarvis devices pair` record the new
//!   device (the age recipient of the certificate they just signed);
//! - on the new device, `jarvis join` records the approving device, from the bundle's sponsor
//!   chain once [`jarvis_identity::Bundle::check_sponsor`] accepted it (same user *key*, valid,
//!   not revoked);
//! - the node records a sibling it meets over the mesh (its hello's verified chain).
//!
//! An entry whose `keys_shared` is false has not yet been given the keys of the documents made
//! before it was recorded: the node does that at start and when a command asks it to
//! ([`RELOAD_PATH`], called by `approve`, `pair` and `join` after writing), and then sets it.
//! Commands and the node both read, merge and write the file atomically, so neither loses what
//! the other added.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use jarvis_identity::PublicKey;
use serde::{Deserialize, Serialize};

use crate::home::Home;

pub const FILE: &str = "devices.json";
/// The running node's API route that makes it read this file again and share keys with the
/// siblings added since.
pub const RELOAD_PATH: &str = "/v1/devices/reload";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// Its age recipient (`age1…`), from its certificate.
    pub recipient: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Every document key this device held has been wrapped to it.
    #[serde(default)]
    pub keys_shared: bool,
}

/// The file's entries, as written by this version or by earlier ones (a bare recipient).
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Recipient(String),
    Entry(Sibling),
}

pub type Siblings = BTreeMap<PublicKey, Sibling>;

/// Reads `devices.json` (empty when absent). Entries whose key or recipient does not parse are
/// skipped with a warning: one bad line must not stop a device from starting.
pub fn load(home: &Home) -> Result<Siblings> {
    let Some(bytes) = home.read_optional(FILE)? else {
        return Ok(Siblings::new());
    };
    parse(&bytes).with_context(|| {
        format!(
            "{} is damaged; move it away and pair your devices again",
            home.dir().join(FILE).display()
        )
    })
}

fn parse(bytes: &[u8]) -> Result<Siblings> {
    let stored: BTreeMap<String, Stored> = serde_json::from_slice(bytes)?;
    let mut out = Siblings::new();
    for (key, entry) in stored {
        let entry = match entry {
            Stored::Recipient(recipient) => Sibling {
                recipient,
                name: String::new(),
                keys_shared: false,
            },
            Stored::Entry(entry) => entry,
        };
        let Ok(key) = key.parse::<PublicKey>() else {
            tracing::warn!(%key, "devices.json: not a device id; skipped");
            continue;
        };
        if entry
            .recipient
            .parse::<jarvis_identity::age::x25519::Recipient>()
            .is_err()
        {
            tracing::warn!(%key, "devices.json: not an age recipient; skipped");
            continue;
        }
        out.insert(key, entry);
    }
    Ok(out)
}

pub fn save(home: &Home, siblings: &Siblings) -> Result<()> {
    let stored: BTreeMap<String, &Sibling> =
        siblings.iter().map(|(k, v)| (k.to_string(), v)).collect();
    let bytes = serde_json::to_vec_pretty(&stored).context("encoding devices.json")?;
    home.write_atomic(FILE, &bytes, false)
}

/// Records a sibling (read, merge, write). A known sibling with the same recipient is left as
/// it is; a new one, or a new recipient, waits for its keys. Returns whether anything changed.
pub fn record(home: &Home, key: PublicKey, recipient: &str, name: &str) -> Result<bool> {
    let mut siblings = load(home)?;
    let changed = merge_one(&mut siblings, key, recipient, name);
    if changed {
        save(home, &siblings)?;
    }
    Ok(changed)
}

fn merge_one(siblings: &mut Siblings, key: PublicKey, recipient: &str, name: &str) -> bool {
    match siblings.get_mut(&key) {
        Some(known) if known.recipient == recipient => {
            if known.name.is_empty() && !name.is_empty() {
                name.clone_into(&mut known.name);
                return true;
            }
            false
        }
        _ => {
            siblings.insert(
                key,
                Sibling {
                    recipient: recipient.to_owned(),
                    name: name.to_owned(),
                    keys_shared: false,
                },
            );
            true
        }
    }
}

/// The node's view merged over the file's: the node's entries stand as they are; entries only
/// the file has (a command added them) are taken, as the file has them, and come back in
/// `added`; entries `drop` rejects (revoked devices) are removed from both.
pub fn merge_into(
    memory: &mut Siblings,
    on_disk: Siblings,
    drop: impl Fn(&PublicKey) -> bool,
) -> Vec<PublicKey> {
    let mut added = Vec::new();
    for (key, entry) in on_disk {
        if drop(&key) || memory.contains_key(&key) {
            continue;
        }
        memory.insert(key, entry);
        added.push(key);
    }
    memory.retain(|k, _| !drop(k));
    added
}

/// Asks the node running on `home`, if any, to share keys with the siblings just recorded;
/// its answer (`{shared_with, documents}`). Without a running node there is nothing to do (it
/// shares them when it starts): `None`.
pub fn tell_running_node(home: &Home) -> Result<Option<serde_json::Value>> {
    let Some(client) = crate::local_api::running(home)? else {
        return Ok(None);
    };
    crate::local_api::block_on(client.post(RELOAD_PATH, &serde_json::json!({})))
        .context("telling the running node about the new device (it will share keys with it when it restarts)")
        .map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jarvis_identity::SecretKey;
    use jarvis_identity::age::x25519::Identity;

    fn recipient() -> String {
        Identity::generate().to_public().to_string()
    }

    #[test]
    fn the_old_format_is_read_and_bad_entries_are_skipped() {
        let (a, b) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        let (ra, rb) = (recipient(), recipient());
        let text = format!(
            r#"{{"{a}": "{ra}", "{b}": {{"recipient": "{rb}", "name": "desk", "keys_shared": true}},
                "not-a-key": "{ra}", "{c}": "not-a-recipient"}}"#,
            c = SecretKey::generate().public()
        );
        let siblings = parse(text.as_bytes()).unwrap();
        assert_eq!(siblings.len(), 2);
        assert_eq!(siblings[&a].recipient, ra);
        assert!(
            !siblings[&a].keys_shared,
            "an old entry is shared with again"
        );
        assert_eq!(siblings[&b].name, "desk");
        assert!(siblings[&b].keys_shared);
        assert!(parse(b"[1,2]").is_err());
    }

    #[test]
    fn merging_keeps_what_a_command_added_and_drops_revoked_devices() {
        let (a, b, c) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        let mut memory = Siblings::new();
        merge_one(&mut memory, a, &recipient(), "laptop");
        memory.get_mut(&a).unwrap().keys_shared = true;
        merge_one(&mut memory, c, &recipient(), "stolen");
        let mut disk = memory.clone();
        merge_one(&mut disk, b, &recipient(), "desk");
        // The file still has the node's older view of `a`: the node's stands.
        let newer = memory[&a].recipient.clone();
        disk.get_mut(&a).unwrap().recipient = recipient();
        disk.get_mut(&a).unwrap().keys_shared = false;
        let added = merge_into(&mut memory, disk, |k| *k == c);
        assert_eq!(added, vec![b]);
        assert!(memory[&a].keys_shared);
        assert_eq!(memory[&a].recipient, newer);
        assert!(!memory[&b].keys_shared);
        assert!(!memory.contains_key(&c));
        // A new recipient for a known device waits for its keys again.
        let r = recipient();
        assert!(merge_one(&mut memory, a, &r, "laptop"));
        assert!(!memory[&a].keys_shared);
        assert!(!merge_one(&mut memory, a, &r, "laptop"));
    }
}

/// `peers.json`: the user's other devices this node has synced with.
pub const SEEN_FILE: &str = "peers.json";

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SeenDevice {
    pub name: String,
    /// Unix seconds of the last sync message exchanged.
    pub last_sync: Option<u64>,
}
