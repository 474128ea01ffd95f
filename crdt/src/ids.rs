//! Document ids and version vectors.

use std::collections::BTreeMap;
use std::fmt;

use jarvis_identity::PublicKey;
use jarvis_identity::encoding::{DecodeError, Reader, Writer};
use jarvis_identity::keys::random_bytes;

/// An opaque random document id: says nothing about the user or the conversation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(pub [u8; 16]);

impl DocId {
    pub fn random() -> Self {
        Self(random_bytes())
    }

    pub fn write(self, w: &mut Writer) {
        w.fixed(&self.0);
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array("document id")?))
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

impl std::str::FromStr for DocId {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| DecodeError::invalid("document id", "not hex"))?;
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|_| DecodeError::invalid("document id", "not 16 bytes"))?;
        Ok(Self(bytes))
    }
}

/// Most actors (devices) one document may have; more is refused rather than allocated.
pub const MAX_ACTORS: usize = 4096;

/// Per actor (device), the highest sequence number held. Changes from one actor to one document
/// are gap-free, so this vector says exactly which changes a replica holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionVector(BTreeMap<PublicKey, u64>);

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, actor: &PublicKey) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    pub fn set(&mut self, actor: PublicKey, seq: u64) {
        if seq == 0 {
            self.0.remove(&actor);
        } else {
            self.0.insert(actor, seq);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &u64)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &Self) {
        for (actor, seq) in &other.0 {
            let slot = self.0.entry(*actor).or_insert(0);
            *slot = (*slot).max(*seq);
        }
    }

    /// Does `self` hold everything `other` does?
    pub fn dominates(&self, other: &Self) -> bool {
        other.0.iter().all(|(a, s)| self.get(a) >= *s)
    }

    /// Total number of changes the vector covers.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn write(&self, w: &mut Writer) {
        w.u16(u16::try_from(self.0.len()).unwrap_or(u16::MAX));
        for (actor, seq) in &self.0 {
            actor.write(w);
            w.u64(*seq);
        }
    }

    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = usize::from(r.u16("vector length")?);
        if count > MAX_ACTORS {
            return Err(DecodeError::TooLong {
                what: "version vector",
                len: count,
                max: MAX_ACTORS,
            });
        }
        let mut map = BTreeMap::new();
        let mut previous: Option<PublicKey> = None;
        for _ in 0..count {
            let actor = PublicKey::read(r, "actor")?;
            let seq = r.u64("sequence number")?;
            // Canonical: strictly increasing actors, no zero entries.
            if previous.is_some_and(|p| p >= actor) || seq == 0 {
                return Err(DecodeError::invalid("version vector", "not canonical"));
            }
            previous = Some(actor);
            map.insert(actor, seq);
        }
        Ok(Self(map))
    }
}
