//! `relays.json`: the org's relay instances this device learned from the directory, beyond the
//! ones its bundle or invite named.
//!
//! A fleet grows after its devices enrolled: a new instance lists itself (with its certificate
//! chain) in every directory answer of the fleet ([`jarvis_mesh::directory::Directory::relays`]).
//! The node checks each one ([`jarvis_mesh::relays::listed_relay`]: the org's, a relay,
//! unrevoked, its own peer id), uses it as one of the org's relays, and records it here so the
//! next start knows it even if the relays of the bundle are gone by then.
//!
//! The file is checked again on every start (it holds what a relay said; a revocation since, or
//! an expired certificate, drops an entry), an entry no directory listed for
//! [`FORGET_AFTER_SECS`] is forgotten, and an unreadable file is ignored with a warning: nothing
//! in it can stop a device from starting.

use jarvis_identity::{PublicKey, RevocationSet, UnixTime};
use jarvis_mesh::directory::Entry;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::home::Home;

pub const FILE: &str = "relays.json";
/// A relay no directory listed for this long (30 days) is forgotten.
pub const FORGET_AFTER_SECS: u64 = 30 * 24 * 3600;
/// How stale a kept entry's `listed_at` may get before the file is written again (a day).
const REFRESH_SECS: u64 = 24 * 3600;
/// The file is at most this large; beyond it, it is not read.
const MAX_FILE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Learned {
    entry: Entry,
    /// When a directory last listed it (Unix seconds).
    listed_at: u64,
}

/// The relays learned, as kept in `relays.json`.
#[derive(Debug, Default)]
pub struct LearnedRelays {
    learned: Vec<Learned>,
    dirty: bool,
}

impl LearnedRelays {
    /// Reads `relays.json` (empty when absent, unreadable or too large: with a warning).
    pub fn load(home: &Home) -> Self {
        let bytes = match home.read_optional(FILE) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Self::default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read {FILE}; relays learned before are forgotten");
                return Self::default();
            }
        };
        if bytes.len() > MAX_FILE_BYTES {
            tracing::warn!("{FILE} is larger than {MAX_FILE_BYTES} bytes; ignored");
            return Self::default();
        }
        match serde_json::from_slice::<Vec<Learned>>(&bytes) {
            Ok(mut learned) => {
                learned.truncate(jarvis_identity::enrol::MAX_RELAYS);
                Self {
                    learned,
                    dirty: false,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "{FILE} is unreadable; relays learned before are forgotten");
                Self::default()
            }
        }
    }

    /// The learned relays that still check out at `now`, as (peer, address to dial); those that
    /// do not, or that no directory listed for [`FORGET_AFTER_SECS`], are dropped.
    pub fn usable(
        &mut self,
        root: &PublicKey,
        now: UnixTime,
        revocations: &RevocationSet,
    ) -> Vec<(PeerId, Multiaddr)> {
        let mut usable = Vec::new();
        let before = self.learned.len();
        self.learned.retain(|l| {
            if now.0.saturating_sub(l.listed_at) > FORGET_AFTER_SECS {
                return false;
            }
            match jarvis_mesh::relays::listed_relay(&l.entry, root, now, revocations) {
                Ok(relay) => {
                    usable.push(relay);
                    true
                }
                Err(e) => {
                    tracing::info!(relay = %l.entry.name, error = %e, "a relay learned before is no longer used");
                    false
                }
            }
        });
        self.dirty |= self.learned.len() != before;
        usable
    }

    /// The relays a directory lists: each is checked, and those for which `known` is false are
    /// kept and returned (peer, address to dial), up to [`jarvis_identity::enrol::MAX_RELAYS`]
    /// learned in all. Those already kept have their `listed_at` refreshed.
    pub fn learn(
        &mut self,
        listed: &[Entry],
        known: impl Fn(&PeerId) -> bool,
        root: &PublicKey,
        now: UnixTime,
        revocations: &RevocationSet,
    ) -> Vec<(PeerId, Multiaddr)> {
        let mut new = Vec::new();
        for entry in listed.iter().take(jarvis_identity::enrol::MAX_RELAYS) {
            let (peer, address) = match jarvis_mesh::relays::listed_relay(
                entry,
                root,
                now,
                revocations,
            ) {
                Ok(relay) => relay,
                Err(e) => {
                    tracing::debug!(relay = %entry.name, error = %e, "a relay the directory lists is not taken");
                    continue;
                }
            };
            // Kept as checked: the addresses a device reads, not whatever more the relay sent.
            let mut listed = entry.clone();
            listed
                .addresses
                .truncate(jarvis_mesh::directory::MAX_ADDRESSES);
            if let Some(kept) = self
                .learned
                .iter_mut()
                .find(|l| l.entry.peer_id == entry.peer_id)
            {
                if now.0.saturating_sub(kept.listed_at) > REFRESH_SECS || kept.entry != listed {
                    kept.listed_at = now.0;
                    kept.entry = listed;
                    self.dirty = true;
                }
                continue;
            }
            if known(&peer) || self.learned.len() >= jarvis_identity::enrol::MAX_RELAYS {
                continue;
            }
            self.learned.push(Learned {
                entry: listed,
                listed_at: now.0,
            });
            self.dirty = true;
            new.push((peer, address));
        }
        new
    }

    /// Writes `relays.json` if it changed.
    pub fn save(&mut self, home: &Home) {
        if !self.dirty {
            return;
        }
        let written = serde_json::to_vec_pretty(&self.learned)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| home.write_atomic(FILE, &bytes, false));
        match written {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!(error = %e, "cannot save {FILE}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use jarvis_identity::{
        CertChain, CertKind, CertTemplate, Certificate, Name, Revocation, RevocationTarget, Roles,
        SecretKey,
    };

    const NOW: UnixTime = UnixTime(1_800_000_000);

    fn relay(root: &SecretKey, port: u16) -> (SecretKey, Entry) {
        let key = SecretKey::generate();
        let cert = Certificate::issue(
            CertTemplate {
                kind: CertKind::Relay,
                subject: key.public(),
                name: Name::new("relay-2").unwrap(),
                roles: Roles::RELAY,
                not_before: NOW,
                not_after: NOW.saturating_add_secs(FORGET_AFTER_SECS * 4),
                age_recipient: None,
            },
            root,
        )
        .unwrap();
        let chain = CertChain::new(vec![cert]).unwrap();
        let entry = Entry {
            peer_id: key.public().to_libp2p_peer_id().unwrap().to_string(),
            name: "relay-2".into(),
            addresses: vec![format!("/ip4/127.0.0.1/udp/{port}/quic-v1")],
            seen_ms_ago: 0,
            gpu: None,
            chain: Some(hex::encode(chain.encode())),
        };
        (key, entry)
    }

    #[test]
    fn what_is_learned_is_kept_checked_again_on_start_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().to_path_buf())).unwrap();
        let root = SecretKey::generate();
        let none = RevocationSet::new(root.public());
        let (key, entry) = relay(&root, 4001);
        let (_, known) = relay(&root, 4002);
        let known_peer: PeerId = known.peer_id.parse().unwrap();
        let mut learned = LearnedRelays::load(&home);
        let new = learned.learn(
            &[entry.clone(), known.clone(), entry.clone()],
            |p| *p == known_peer,
            &root.public(),
            NOW,
            &none,
        );
        assert_eq!(new.len(), 1, "the new one, once; not the one known already");
        assert_eq!(new[0].0.to_string(), entry.peer_id);
        learned.save(&home);

        // The next start has it, checked again.
        let mut again = LearnedRelays::load(&home);
        assert_eq!(again.usable(&root.public(), NOW, &none), new);
        // Listed again: not new.
        assert!(
            again
                .learn(
                    std::slice::from_ref(&entry),
                    |_| false,
                    &root.public(),
                    NOW,
                    &none
                )
                .is_empty()
        );
        // A month without being listed: forgotten.
        let later = UnixTime(NOW.0 + FORGET_AFTER_SECS + 1);
        assert!(again.usable(&root.public(), later, &none).is_empty());

        // Revoked since: dropped, and the file says so.
        let mut revoked = RevocationSet::new(root.public());
        revoked
            .insert(
                Revocation::issue(
                    RevocationTarget::Key(key.public()),
                    "gone",
                    NOW,
                    None,
                    &root,
                )
                .unwrap(),
            )
            .unwrap();
        let mut third = LearnedRelays::load(&home);
        assert!(third.usable(&root.public(), NOW, &revoked).is_empty());
        third.save(&home);
        assert!(
            LearnedRelays::load(&home)
                .usable(&root.public(), NOW, &none)
                .is_empty()
        );

        // At most MAX_RELAYS, however many a directory lists.
        let many: Vec<Entry> = (0..40).map(|i| relay(&root, 5000 + i).1).collect();
        let mut bounded = LearnedRelays::default();
        let mut total = 0;
        for chunk in many.chunks(10) {
            total += bounded
                .learn(chunk, |_| false, &root.public(), NOW, &none)
                .len();
        }
        assert_eq!(total, jarvis_identity::enrol::MAX_RELAYS);
    }

    #[test]
    fn an_unreadable_or_oversized_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().to_path_buf())).unwrap();
        let root = SecretKey::generate();
        let none = RevocationSet::new(root.public());
        for bytes in [
            b"not json".to_vec(),
            b"[{\"entry\": 1}]".to_vec(),
            vec![b' '; MAX_FILE_BYTES + 1],
        ] {
            home.write_atomic(FILE, &bytes, false).unwrap();
            let mut learned = LearnedRelays::load(&home);
            assert!(learned.usable(&root.public(), NOW, &none).is_empty());
        }
        // A well-formed entry another org's relay wrote is not used.
        let (_, stranger) = relay(&SecretKey::generate(), 4001);
        let bytes = serde_json::to_vec(&[Learned {
            entry: stranger,
            listed_at: NOW.0,
        }])
        .unwrap();
        home.write_atomic(FILE, &bytes, false).unwrap();
        assert!(
            LearnedRelays::load(&home)
                .usable(&root.public(), NOW, &none)
                .is_empty()
        );
    }
}
