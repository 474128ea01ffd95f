//! Who the relay has admitted, and who claimed which invite: kept in the relay's store (sled
//! trees `roster/members` and `roster/claims`, or PostgreSQL tables `relay_members` and
//! `relay_claims`) so an admin can ask for them after restarts.
//!
//! An invite makes one user. The first user key presented through an invite claims it; another
//! user key presenting the same invite later (someone else ran `jarvis join` with the same token)
//! is refused admission, and both claims stay on record for the admin. The first claim is
//! created atomically (sled's compare-and-swap, PostgreSQL's primary key): two relay instances
//! over one database cannot both accept one invite for two users.

use std::collections::BTreeMap;

use jarvis_identity::{CertChain, Verified};
use libp2p::PeerId;

use jarvis_mesh::directory::{Claim, MemberSeen, invite_of, through_user};

/// Refused claims kept per invite (the first ones: a token that leaked is revoked long before).
const MAX_REFUSED_PER_INVITE: usize = 16;

pub struct Roster {
    backend: Backend,
}

enum Backend {
    Sled {
        members: sled::Tree,
        claims: sled::Tree,
    },
    Postgres(crate::pg::Pg),
}

/// The roster's store failed.
#[derive(Debug, thiserror::Error)]
#[error("the relay's roster: {0}")]
pub struct RosterError(String);

impl From<sled::Error> for RosterError {
    fn from(e: sled::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<jarvis_crdt::store::StoreError> for RosterError {
    fn from(e: jarvis_crdt::store::StoreError) -> Self {
        Self(e.to_string())
    }
}

type Result<T> = std::result::Result<T, RosterError>;

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
    pub fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            backend: Backend::Sled {
                members: db.open_tree("roster/members")?,
                claims: db.open_tree("roster/claims")?,
            },
        })
    }

    /// The roster in a PostgreSQL database, shared by every relay instance on it.
    pub fn postgres(pg: crate::pg::Pg) -> Self {
        Self {
            backend: Backend::Postgres(pg),
        }
    }

    fn claims_of(&self, invite: &[u8; 16]) -> Result<Option<Claims>> {
        let bytes = match &self.backend {
            Backend::Sled { claims, .. } => claims.get(invite)?.map(|b| b.to_vec()),
            Backend::Postgres(pg) => pg.roster_get("relay_claims", &hex::encode(invite))?,
        };
        // A damaged record reads as none, and is replaced rather than locking the user out.
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Records `record` as the invite's claims only if it has none yet; whether it did.
    fn first_claim(&self, invite: &[u8; 16], record: &Claims) -> Result<bool> {
        let bytes = serde_json::to_vec(record).map_err(|e| RosterError(e.to_string()))?;
        match &self.backend {
            Backend::Sled { claims, .. } => Ok(claims
                .compare_and_swap(invite, None as Option<&[u8]>, Some(bytes))?
                .is_ok()),
            Backend::Postgres(pg) => {
                Ok(pg.roster_insert("relay_claims", &hex::encode(invite), &bytes)?)
            }
        }
    }

    fn put_claims(&self, invite: &[u8; 16], record: &Claims) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| RosterError(e.to_string()))?;
        match &self.backend {
            Backend::Sled { claims, .. } => {
                claims.insert(invite, bytes)?;
            }
            Backend::Postgres(pg) => pg.roster_put("relay_claims", &hex::encode(invite), &bytes)?,
        }
        Ok(())
    }

    /// Checks (and records) the invite a device's chain came through. Written before the
    /// device is admitted, flushed with the next store flush.
    pub fn check_claim(
        &self,
        peer: PeerId,
        verified: &Verified,
        chain: &CertChain,
        at: u64,
    ) -> Result<ClaimCheck> {
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
        let mut record = match self.claims_of(&key)? {
            Some(record) => record,
            None => {
                let record = Claims {
                    first: claim.clone(),
                    refused: Vec::new(),
                };
                if self.first_claim(&key, &record)? {
                    return Ok(ClaimCheck::Fine);
                }
                // Another instance (or a damaged record) got there first: read what won.
                match self.claims_of(&key)? {
                    Some(won) => won,
                    None => {
                        self.put_claims(&key, &record)?;
                        return Ok(ClaimCheck::Fine);
                    }
                }
            }
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
            self.put_claims(&key, &record)?;
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
    ) -> Result<()> {
        let Some((serial, user, user_key)) = invite_of(chain) else {
            return Ok(());
        };
        let Some(mut record) = self.claims_of(&serial.0)? else {
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
        self.put_claims(&serial.0, &record)
    }

    /// Records an admitted member (first and last seen).
    pub fn admitted(&self, peer: PeerId, verified: &Verified, at: u64) -> Result<()> {
        let key = peer.to_bytes();
        let id = peer.to_string();
        let seen = match &self.backend {
            Backend::Sled { members, .. } => members.get(&key)?.map(|b| b.to_vec()),
            Backend::Postgres(pg) => pg.roster_get("relay_members", &id)?,
        };
        let first_seen = seen
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
        let bytes = serde_json::to_vec(&member).map_err(|e| RosterError(e.to_string()))?;
        match &self.backend {
            Backend::Sled { members, .. } => {
                members.insert(key, bytes)?;
            }
            Backend::Postgres(pg) => pg.roster_put("relay_members", &id, &bytes)?,
        }
        Ok(())
    }

    /// Every member and claim on record; `online` says which peers are connected now.
    pub fn report(&self, online: impl Fn(&str) -> bool) -> Result<(Vec<MemberSeen>, Vec<Claim>)> {
        let (members, claims): (Vec<Vec<u8>>, Vec<Vec<u8>>) = match &self.backend {
            Backend::Sled { members, claims } => (
                members
                    .iter()
                    .values()
                    .filter_map(|v| v.ok())
                    .map(|v| v.to_vec())
                    .collect(),
                claims
                    .iter()
                    .values()
                    .filter_map(|v| v.ok())
                    .map(|v| v.to_vec())
                    .collect(),
            ),
            Backend::Postgres(pg) => (
                pg.roster_all("relay_members")?,
                pg.roster_all("relay_claims")?,
            ),
        };
        let mut members: Vec<MemberSeen> = members
            .iter()
            .filter_map(|v| serde_json::from_slice::<MemberSeen>(v).ok())
            .map(|mut m| {
                m.online = online(&m.id);
                m
            })
            .collect();
        members.sort_by(|a, b| (&a.kind, &a.user, &a.name).cmp(&(&b.kind, &b.user, &b.name)));
        let mut by_invite = BTreeMap::new();
        for record in claims
            .iter()
            .filter_map(|v| serde_json::from_slice::<Claims>(v).ok())
        {
            by_invite.insert(record.first.invite.clone(), record);
        }
        let claims = by_invite
            .into_values()
            .flat_map(|r| std::iter::once(r.first).chain(r.refused))
            .collect();
        Ok((members, claims))
    }
}
