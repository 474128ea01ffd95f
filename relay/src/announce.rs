//! What a relay instance tells the others of its fleet when a commit lands: which changes and
//! key records it stored for which user, by ids and sizes only (the data is read from the
//! shared tables by whoever needs it). Carried as PostgreSQL notifications (`crate::pg`),
//! each payload within PostgreSQL's 8,000-byte limit; read back as untrusted text.

use jarvis_crdt::envelope::KeyId;
use jarvis_crdt::ids::DocId;
use jarvis_identity::PublicKey;

/// Bytes of one notification's payload, at most (PostgreSQL's limit is 8,000).
const MAX_PAYLOAD: usize = 7_000;

/// What one commit stored in one namespace: ids and sizes only (the data is read from the
/// tables by whoever needs it), announced to the other instances as the commit lands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Runs of changes: (document, actor, first sequence, last sequence).
    pub changes: Vec<(DocId, PublicKey, u64, u64)>,
    /// Key records: (document, record id).
    pub keys: Vec<(DocId, KeyId)>,
    /// Documents given a new snapshot.
    pub snapshots: Vec<DocId>,
    /// Bytes the namespace grew by (negative when a snapshot's compaction freed more).
    pub grew: i64,
}

/// A notification's payload (JSON; ids in hex).
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    from: u64,
    ns: String,
    #[serde(default)]
    changes: Vec<(String, String, u64, u64)>,
    #[serde(default)]
    keys: Vec<(String, String)>,
    #[serde(default)]
    snapshots: Vec<String>,
    #[serde(default)]
    grew: i64,
}

/// The most changes one announced run may name (a batch holds far fewer).
const MAX_RUN: u64 = 100_000;

impl Notice {
    pub fn change(&mut self, doc: DocId, actor: PublicKey, seq: u64) {
        if let Some(last) = self.changes.last_mut()
            && last.0 == doc
            && last.1 == actor
            && last.3.checked_add(1) == Some(seq)
        {
            last.3 = seq;
            return;
        }
        self.changes.push((doc, actor, seq, seq));
    }

    /// The notifications announcing this, each within PostgreSQL's payload limit.
    pub fn payloads(self, from: u64, ns: &str) -> Vec<String> {
        let fresh = |grew| Payload {
            from,
            ns: ns.to_owned(),
            changes: Vec::new(),
            keys: Vec::new(),
            snapshots: Vec::new(),
            grew,
        };
        let mut out = Vec::new();
        // The byte count (`grew`) goes with the first notification only.
        let mut current = fresh(self.grew);
        let mut size = 0usize;
        let flush = |current: &mut Payload, out: &mut Vec<String>| {
            let done = std::mem::replace(current, fresh(0));
            if let Ok(text) = serde_json::to_string(&done) {
                out.push(text);
            }
        };
        for (doc, actor, first, last) in self.changes {
            if size > MAX_PAYLOAD - 200 - ns.len() {
                flush(&mut current, &mut out);
                size = 0;
            }
            current.changes.push((
                hex::encode(doc.0),
                hex::encode(actor.to_bytes()),
                first,
                last,
            ));
            size += 140;
        }
        for (doc, id) in self.keys {
            if size > MAX_PAYLOAD - 200 - ns.len() {
                flush(&mut current, &mut out);
                size = 0;
            }
            current.keys.push((hex::encode(doc.0), hex::encode(id)));
            size += 80;
        }
        for doc in self.snapshots {
            if size > MAX_PAYLOAD - 200 - ns.len() {
                flush(&mut current, &mut out);
                size = 0;
            }
            current.snapshots.push(hex::encode(doc.0));
            size += 40;
        }
        flush(&mut current, &mut out);
        out
    }
}

/// What another instance stored in one namespace, as its commit announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The instance that stored it.
    pub from: u64,
    /// The namespace (one user's: `crate::server`'s `user/<hex>/`).
    pub ns: String,
    /// Runs of changes: (document, actor, first sequence, last sequence).
    pub changes: Vec<(DocId, PublicKey, u64, u64)>,
    /// Key records: (document, record id).
    pub keys: Vec<(DocId, KeyId)>,
    /// Documents given a new snapshot.
    pub snapshots: Vec<DocId>,
    /// Bytes the namespace grew by.
    pub grew: i64,
}

impl Stored {
    /// Every document it names.
    pub fn docs(&self) -> impl Iterator<Item = DocId> + '_ {
        self.changes
            .iter()
            .map(|c| c.0)
            .chain(self.keys.iter().map(|k| k.0))
            .chain(self.snapshots.iter().copied())
    }
}

impl Stored {
    /// Reads a notification's payload. It comes from the fleet's own database, but is checked
    /// as any input is: bounded, well-formed, or refused with why.
    pub fn decode(payload: &str) -> Result<Self, String> {
        if payload.len() > 8_000 {
            return Err("a notification longer than PostgreSQL allows".to_owned());
        }
        let raw: Payload = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        let bytes = |text: &str| hex::decode(text).map_err(|e| e.to_string());
        let doc = |text: &str| {
            <[u8; 16]>::try_from(bytes(text)?)
                .map(DocId)
                .map_err(|_| "a document id is not 16 bytes".to_owned())
        };
        let changes = raw
            .changes
            .iter()
            .map(|(d, a, first, last)| {
                let actor = <[u8; 32]>::try_from(bytes(a)?)
                    .map_err(|_| "an actor is not 32 bytes".to_owned())?;
                let actor = PublicKey::from_bytes(actor).map_err(|e| e.to_string())?;
                if first == &0 || last < first || last - first > MAX_RUN {
                    return Err(format!("a run of changes {first}..={last} is out of range"));
                }
                Ok((doc(d)?, actor, *first, *last))
            })
            .collect::<Result<_, String>>()?;
        let keys = raw
            .keys
            .iter()
            .map(|(d, id)| {
                let id = KeyId::try_from(bytes(id)?)
                    .map_err(|_| "a key record id is not 16 bytes".to_owned())?;
                Ok((doc(d)?, id))
            })
            .collect::<Result<_, String>>()?;
        let snapshots = raw
            .snapshots
            .iter()
            .map(|d| doc(d))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            from: raw.from,
            ns: raw.ns,
            changes,
            keys,
            snapshots,
            grew: raw.grew,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A commit that stored a lot is announced in several notifications, each within
    /// PostgreSQL's limit, which read back to exactly what was stored, its size counted once.
    #[test]
    fn a_large_commit_is_split_within_the_limit_and_reads_back_whole() {
        let mut notice = Notice {
            grew: 123_456,
            ..Notice::default()
        };
        let doc = DocId::random();
        for _ in 0..300 {
            let actor = jarvis_identity::SecretKey::generate().public();
            notice.change(doc, actor, 1);
            notice.change(doc, actor, 2);
            notice.keys.push((DocId::random(), [7; 16]));
        }
        notice.snapshots.push(doc);
        let payloads = notice.clone().payloads(9, "org/00/user/616c696365/");
        assert!(payloads.len() > 1, "{} payloads", payloads.len());
        let mut back = Notice::default();
        for payload in &payloads {
            assert!(payload.len() < 8_000, "{} bytes", payload.len());
            let stored = Stored::decode(payload).unwrap();
            assert_eq!(stored.from, 9);
            back.changes.extend(stored.changes);
            back.keys.extend(stored.keys);
            back.snapshots.extend(stored.snapshots);
            back.grew += stored.grew;
        }
        assert_eq!(back, notice);
    }
}
