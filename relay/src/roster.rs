//! Who the relay has admitted, and who claimed which invite: kept in the relay's sled database
//! (trees `roster/members` and `roster/claims`) so an admin can ask for them after restarts.
//!
//! An invite makes one user. The first user key presented through an invite claims it; another
//! user key presenting the same invite later (someone else ran `jarvis join` with the same token)
//! is refused admission, and both claims stay on record for the admin.

use std::collections::BTreeMap;

use jarvis_identity::{CertChain, Verified};
use libp2p::PeerId;

use jarvis_mesh::directory::{Claim, MemberSeen, invite_of, through_user};

/// Refused claims kept per invite (the first ones: a token that leaked is revoked long before).
const MAX_REFUSED_PER_INVITE: usize = 16;

pub struct Roster {
    members: sled::Tree,
    claims: sled::Tree,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    first: Claim,
    #[serde(default)]
    refused: Vec<Claim>,
}

/// What the roster says about a device's invite.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimCheck {
    /// No invite in its chain, the first claim, or the same user as the first claim.
    Fine,
    /// Another user key claimed this invite first.
    Refused(String),
}

impl Roster {
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            members: db.open_tree("roster/members")?,
            claims: db.open_tree("roster/claims")?,
        })
    }

    /// Checks (and records) the invite a device's chain came through. Written before the
    /// device is admitted, flushed with the next store flush.
    pub fn check_claim(
        &self,
        peer: PeerId,
        verified: &Verified,
        chain: &CertChain,
        at: u64,
    ) -> sled::Result<ClaimCheck> {
        let Some((serial, user, user_key)) = invite_of(chain) else {
            return Ok(ClaimCheck::Fine);
        };
        let key = serial.0;
        let claim = Claim {
            invite: serial.to_string(),
            user: user.to_string(),
            user_key: user_key.to_string(),
            device: peer.to_string(),
            device_name: verified.name.to_string(),
            at,
            accepted: true,
            chain: through_user(chain)
                .map(|c| hex::encode(c.encode()))
                .unwrap_or_default(),
        };
        let mut record = match self.claims.get(key)? {
            None => {
                let record = Claims {
                    first: claim,
                    refused: Vec::new(),
                };
                self.claims
                    .insert(key, serde_json::to_vec(&record).unwrap_or_default())?;
                return Ok(ClaimCheck::Fine);
            }
            Some(bytes) => match serde_json::from_slice::<Claims>(&bytes) {
                Ok(record) => record,
                // A damaged record is replaced by this claim rather than locking the user out.
                Err(_) => Claims {
                    first: claim.clone(),
                    refused: Vec::new(),
                },
            },
        };
        if record.first.user_key == claim.user_key {
            return Ok(ClaimCheck::Fine);
        }
        // Said to the refused device too, so it names no other device (the admin's
        // `members` shows which one claimed it).
        let reason = format!(
            "invite {} was already claimed by user `{}` on another device; ask an admin for a new invite",
            claim.invite, record.first.user
        );
        if !record.refused.iter().any(|r| r.device == claim.device)
            && record.refused.len() < MAX_REFUSED_PER_INVITE
        {
            record.refused.push(Claim {
                accepted: false,
                chain: String::new(),
                ..claim
            });
            self.claims
                .insert(key, serde_json::to_vec(&record).unwrap_or_default())?;
        }
        Ok(ClaimCheck::Refused(reason))
    }

    /// Records a device refused because a signed claim record gives its invite to another user
    /// key (its chain check fails before [`Roster::check_claim`] would run), so the admin still
    /// sees who tried. Only added to an invite already on record here: a refused claimant never
    /// becomes an invite's first claim.
    pub fn note_refused_claim(
        &self,
        peer: PeerId,
        verified: &Verified,
        chain: &CertChain,
        at: u64,
    ) -> sled::Result<()> {
        let Some((serial, user, user_key)) = invite_of(chain) else {
            return Ok(());
        };
        let Some(bytes) = self.claims.get(serial.0)? else {
            return Ok(());
        };
        let Ok(mut record) = serde_json::from_slice::<Claims>(&bytes) else {
            return Ok(());
        };
        let device = peer.to_string();
        if record.first.user_key == user_key.to_string()
            || record.refused.iter().any(|r| r.device == device)
            || record.refused.len() >= MAX_REFUSED_PER_INVITE
        {
            return Ok(());
        }
        record.refused.push(Claim {
            invite: serial.to_string(),
            user: user.to_string(),
            user_key: user_key.to_string(),
            device,
            device_name: verified.name.to_string(),
            at,
            accepted: false,
            chain: String::new(),
        });
        self.claims
            .insert(serial.0, serde_json::to_vec(&record).unwrap_or_default())?;
        Ok(())
    }

    /// Records an admitted member (first and last seen).
    pub fn admitted(&self, peer: PeerId, verified: &Verified, at: u64) -> sled::Result<()> {
        let key = peer.to_bytes();
        let first_seen = self
            .members
            .get(&key)?
            .and_then(|b| serde_json::from_slice::<MemberSeen>(&b).ok())
            .map_or(at, |m| m.first_seen);
        let member = MemberSeen {
            kind: verified.kind.as_str().to_owned(),
            name: verified.name.to_string(),
            id: peer.to_string(),
            user: verified
                .user
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            first_seen,
            last_seen: at,
            online: false,
        };
        self.members
            .insert(key, serde_json::to_vec(&member).unwrap_or_default())?;
        Ok(())
    }

    /// Every member and claim on record; `online` says which peers are connected now.
    pub fn report(&self, online: impl Fn(&str) -> bool) -> (Vec<MemberSeen>, Vec<Claim>) {
        let mut members: Vec<MemberSeen> = self
            .members
            .iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| serde_json::from_slice::<MemberSeen>(&v).ok())
            .map(|mut m| {
                m.online = online(&m.id);
                m
            })
            .collect();
        members.sort_by(|a, b| (&a.kind, &a.user, &a.name).cmp(&(&b.kind, &b.user, &b.name)));
        let mut by_invite = BTreeMap::new();
        for record in self
            .claims
            .iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| serde_json::from_slice::<Claims>(&v).ok())
        {
            by_invite.insert(record.first.invite.clone(), record);
        }
        let claims = by_invite
            .into_values()
            .flat_map(|r| std::iter::once(r.first).chain(r.refused))
            .collect();
        (members, claims)
    }
}
