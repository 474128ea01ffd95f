//! The relay's core, sans-IO: blind store-and-forward of each user's sealed changes.
//!
//! Every admitted device is a sync peer of its user's **keyless** replica: the relay stores the
//! ciphertext and the (document, actor, sequence, epoch) headers, answers the sync protocol
//! exactly as a device does ([`jarvis_crdt::sync`]), and pushes what one device sends to the
//! user's other connected devices at once. It holds no document key, so it can never read a
//! conversation. Users are kept apart: a device is only ever a peer of its own user's replica.
//!
//! The hub also enforces the limits that keep one user from hurting the others: a token bucket
//! of bytes per peer (the rate) and a storage quota per user. A refused message is not stored
//! and not acknowledged; the refusal says why, and the device's session sends it again later.
//!
//! Generic over the peer id (`P`) and the store (`S`), so tests and simulations drive it with
//! in-memory stores and plain numbers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use jarvis_crdt::store::{Store, StoreError};
use jarvis_crdt::sync::SyncError;
use jarvis_crdt::{Replica, Session, SyncMessage};
use jarvis_identity::Name;

/// What a relay allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of sealed data stored per user.
    pub quota_bytes: u64,
    /// Sustained bytes per second one peer may send.
    pub rate_bytes_per_sec: u64,
    /// Bytes a peer may send at once after being idle.
    pub burst_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            quota_bytes: 1 << 30,
            rate_bytes_per_sec: 256 << 10,
            burst_bytes: 2 << 20,
        }
    }
}

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not admitted: authenticate as a device of this org first")]
    NotAdmitted,
    #[error("malformed sync message: {0}")]
    Malformed(String),
    #[error("rate limit: slow down, try again in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    #[error(
        "storage quota of user {user} is full ({used} of {quota} bytes): ask an admin for more, or let a snapshot replace old history"
    )]
    QuotaExceeded { user: Name, used: u64, quota: u64 },
    #[error("the relay cannot store this now: {0}")]
    Store(String),
}

impl Refusal {
    /// A short name, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAdmitted => "not-admitted",
            Self::Malformed(_) => "malformed",
            Self::RateLimited { .. } => "rate-limited",
            Self::QuotaExceeded { .. } => "quota",
            Self::Store(_) => "store",
        }
    }
}

/// A token bucket of bytes, on the caller's clock.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn full(limits: &Limits, now_ms: u64) -> Self {
        Self {
            tokens: limits.burst_bytes as f64,
            at_ms: now_ms,
        }
    }

    /// Takes `bytes`, or says how long until they would be there. A message larger than the
    /// burst (a big snapshot) is taken once the bucket is full, leaving it in debt, so it
    /// passes at the rate instead of never.
    fn take(&mut self, bytes: usize, limits: &Limits, now_ms: u64) -> Result<(), u64> {
        let rate = limits.rate_bytes_per_sec.max(1) as f64;
        let burst = limits.burst_bytes as f64;
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at_ms = now_ms.max(self.at_ms);
        let want = (bytes as f64).min(burst);
        if self.tokens >= want {
            self.tokens -= bytes as f64;
            Ok(())
        } else {
            Err((((want - self.tokens) / rate) * 1000.0).ceil() as u64)
        }
    }
}

struct PeerState {
    user: Name,
    session: Session,
    bucket: Bucket,
}

/// What handling one message did.
#[derive(Debug)]
pub struct Handled<P> {
    /// Taken (durable, when it carried data), or refused and why.
    pub result: Result<(), Refusal>,
    /// Messages for peers: the sender's answers and the live fan-out to the user's other
    /// devices.
    pub send: Vec<(P, SyncMessage)>,
    /// Changes newly stored.
    pub stored: usize,
}

/// A user's replica, and the bytes it holds (counted once when opened, then kept up to date,
/// so the quota check does not scan the store).
struct UserStore<S: Store> {
    replica: Replica<S>,
    used: u64,
}

/// Opens (or creates) a user's store.
pub type OpenStore<S> = Box<dyn FnMut(&Name) -> Result<S, StoreError> + Send>;

/// The store-and-forward hub.
pub struct Hub<P, S: Store> {
    open: OpenStore<S>,
    users: BTreeMap<Name, UserStore<S>>,
    peers: HashMap<P, PeerState>,
    limits: Limits,
    /// Users written to since the last [`Hub::commit`] (a group commit in progress).
    dirty: BTreeSet<Name>,
}

impl<P: Copy + Eq + Hash, S: Store> Hub<P, S> {
    pub fn new(limits: Limits, open: OpenStore<S>) -> Self {
        Self {
            open,
            users: BTreeMap::new(),
            peers: HashMap::new(),
            limits,
            dirty: BTreeSet::new(),
        }
    }

    fn replica(&mut self, user: &Name) -> Result<&mut Replica<S>, StoreError> {
        if !self.users.contains_key(user) {
            let store = (self.open)(user)?;
            let used = store.stored_bytes()?;
            self.users.insert(
                user.clone(),
                UserStore {
                    replica: Replica::keyless(store),
                    used,
                },
            );
        }
        self.users
            .get_mut(user)
            .map(|u| &mut u.replica)
            .ok_or_else(|| StoreError::Io("the user's store vanished".into()))
    }

    /// Admits an authenticated device of `user`: its sync session starts, announcing what the
    /// relay holds for that user.
    pub fn admit(
        &mut self,
        peer: P,
        user: Name,
        now_ms: u64,
    ) -> Result<Vec<(P, SyncMessage)>, Refusal> {
        let limits = self.limits;
        let replica = self
            .replica(&user)
            .map_err(|e| Refusal::Store(e.to_string()))?;
        let mut session = Session::new();
        let out = session
            .start(now_ms, replica)
            .map_err(|e| Refusal::Store(e.to_string()))?;
        self.peers.insert(
            peer,
            PeerState {
                user,
                session,
                bucket: Bucket::full(&limits, now_ms),
            },
        );
        Ok(out.into_iter().map(|m| (peer, m)).collect())
    }

    /// The peer disconnected (or was revoked).
    pub fn leave(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    pub fn is_admitted(&self, peer: &P) -> bool {
        self.peers.contains_key(peer)
    }

    /// The user a peer was admitted as.
    pub fn user_of(&self, peer: &P) -> Option<&Name> {
        self.peers.get(peer).map(|p| &p.user)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admitted peers.
    pub fn connections(&self) -> usize {
        self.peers.len()
    }

    /// Bytes stored for each user whose store is open.
    pub fn stored_bytes(&self) -> BTreeMap<Name, u64> {
        self.users
            .iter()
            .map(|(user, u)| (user.clone(), u.used))
            .collect()
    }

    /// A sync message (still encoded: untrusted bytes) from `peer`. Durable before it returns
    /// `Ok`, so the transport acknowledgement may go back then.
    pub fn handle(&mut self, peer: P, bytes: &[u8], now_ms: u64) -> Handled<P> {
        let mut handled = self.take(peer, bytes, now_ms);
        if let Err(e) = self.commit()
            && handled.result.is_ok()
        {
            handled = Handled {
                result: Err(Refusal::Store(e.to_string())),
                send: Vec::new(),
                stored: 0,
            };
        }
        handled
    }

    /// Makes everything taken since the last commit durable, with one flush per store (one in
    /// all when the stores share a database). Until it returns `Ok`, nothing taken may be
    /// acknowledged; if it fails, nothing taken is (the devices send it again on resync).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let mut result = Ok(());
        for user in std::mem::take(&mut self.dirty) {
            if let Some(store) = self.users.get_mut(&user)
                && let Err(e) = store.replica.end_batch()
            {
                result = Err(StoreError::Io(e.to_string()));
            }
        }
        result
    }

    /// Takes a sync message as part of a group commit: written, not yet durable. `Ok` means
    /// taken; acknowledge it only once [`Hub::commit`] has succeeded. Messages of many peers
    /// (and users) can be taken before one commit, so a burst costs one flush.
    pub fn take(&mut self, peer: P, bytes: &[u8], now_ms: u64) -> Handled<P> {
        let refused = |r| Handled {
            result: Err(r),
            send: Vec::new(),
            stored: 0,
        };
        let limits = self.limits;
        let Some(state) = self.peers.get_mut(&peer) else {
            return refused(Refusal::NotAdmitted);
        };
        if let Err(retry_after_ms) = state.bucket.take(bytes.len(), &limits, now_ms) {
            return refused(Refusal::RateLimited { retry_after_ms });
        }
        let message = match SyncMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => return refused(Refusal::Malformed(e.to_string())),
        };
        let user = state.user.clone();
        let Some(store) = self.users.get_mut(&user) else {
            return refused(Refusal::Store("the user's store is not open".into()));
        };
        let stores_data = matches!(
            message,
            SyncMessage::Changes { .. } | SyncMessage::Snapshot { .. } | SyncMessage::Keys { .. }
        );
        if stores_data && store.used >= limits.quota_bytes {
            return refused(Refusal::QuotaExceeded {
                user,
                used: store.used,
                quota: limits.quota_bytes,
            });
        }
        let replica = &mut store.replica;
        let Some(state) = self.peers.get_mut(&peer) else {
            return refused(Refusal::NotAdmitted);
        };
        if self.dirty.insert(user.clone()) {
            replica.begin_batch();
        }
        let result = state.session.handle(message, now_ms, replica);
        let out = match result {
            Ok(out) => out,
            // The store failed (a database down): the device is told, and sends it again.
            Err(jarvis_crdt::sync::SyncError::Replica(jarvis_crdt::ReplicaError::Store(e))) => {
                return refused(Refusal::Store(e.to_string()));
            }
            // The message was understood but refused (a forged or out-of-place change).
            Err(e) => return refused(Refusal::Malformed(e.to_string())),
        };
        let mut send: Vec<(P, SyncMessage)> = out.send.into_iter().map(|m| (peer, m)).collect();
        let stored = out.received.stored;
        let keys = out.received.keys;
        // Kept from what this message did, never by rescanning the store: a device sending key
        // records or snapshots must not make the relay read a whole user's store each time.
        store.used = store.used.saturating_add_signed(out.received.grew_by);
        send.extend(fan_out(
            &mut self.peers,
            &user,
            Some(peer),
            &keys,
            &stored,
            replica,
        ));
        Handled {
            result: Ok(()),
            send,
            stored: stored.len(),
        }
    }

    /// Changes and key records another relay instance stored for `user` (it said so on the
    /// shared database, by ids; they are read back from the store here): pushed to the user's
    /// devices connected to this instance, as if a device here had sent them. A change or key
    /// not found (compacted since, or a bogus id) is skipped: the sessions' resync heals
    /// whatever this misses. `grew` keeps the quota's count in step with the other writers.
    pub fn stored_elsewhere(
        &mut self,
        user: &Name,
        changes: &[(jarvis_crdt::DocId, jarvis_identity::PublicKey, u64, u64)],
        keys: &[(jarvis_crdt::DocId, jarvis_crdt::envelope::KeyId)],
        grew: i64,
    ) -> Vec<(P, SyncMessage)> {
        let Some(store) = self.users.get_mut(user) else {
            // No device of the user is here (its store opens, and is counted, on admission).
            return Vec::new();
        };
        store.used = store.used.saturating_add_signed(grew);
        if !self.peers.values().any(|state| &state.user == user) {
            return Vec::new();
        }
        let replica = &store.replica;
        let mut records = Vec::new();
        let mut docs_keys: BTreeMap<jarvis_crdt::DocId, Vec<jarvis_crdt::KeyRecord>> =
            BTreeMap::new();
        for (doc, id) in keys {
            if !docs_keys.contains_key(doc) {
                match replica.store().keys(*doc) {
                    Ok(found) => {
                        docs_keys.insert(*doc, found);
                    }
                    Err(e) => tracing::debug!(error = %e, "fan-out skipped a key record"),
                }
            }
            records.extend(
                docs_keys
                    .get(doc)
                    .and_then(|found| found.iter().find(|r| r.id() == *id))
                    .cloned(),
            );
        }
        let mut stored = Vec::new();
        for (doc, actor, first, last) in changes {
            for seq in *first..=*last {
                match replica.store().change(*doc, actor, seq) {
                    Ok(Some(change)) => stored.push(change),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "fan-out skipped a change"),
                }
            }
        }
        fan_out(&mut self.peers, user, None, &records, &stored, replica)
    }

    /// Every session re-announces what the relay holds now, rather than at its next timer
    /// (announcements from the other instances were missed).
    pub fn resync_all(&mut self, now_ms: u64) -> Vec<(P, SyncMessage)> {
        self.each_session(|session, replica| session.start(now_ms, replica))
    }

    /// Timers: sessions re-announce what the relay holds, so anything lost is sent again.
    pub fn poll(&mut self, now_ms: u64) -> Vec<(P, SyncMessage)> {
        self.each_session(|session, replica| session.poll(now_ms, replica))
    }

    /// `step` for every session, with its user's replica; what they send.
    fn each_session(
        &mut self,
        mut step: impl FnMut(&mut Session, &Replica<S>) -> Result<Vec<SyncMessage>, SyncError>,
    ) -> Vec<(P, SyncMessage)> {
        let mut send = Vec::new();
        for (peer, state) in &mut self.peers {
            let Some(store) = self.users.get(&state.user) else {
                continue;
            };
            match step(&mut state.session, &store.replica) {
                Ok(messages) => send.extend(messages.into_iter().map(|m| (*peer, m))),
                Err(e) => tracing::warn!(error = %e, "resync failed"),
            }
        }
        send
    }
}

/// Live fan-out: key records and changes just stored for `user` (by `from`, or by another
/// instance), pushed to that user's other connected devices as far as their sessions allow.
fn fan_out<P: Copy + Eq + Hash, S: Store>(
    peers: &mut HashMap<P, PeerState>,
    user: &Name,
    from: Option<P>,
    keys: &[jarvis_crdt::KeyRecord],
    changes: &[jarvis_crdt::SealedChange],
    replica: &Replica<S>,
) -> Vec<(P, SyncMessage)> {
    let mut send = Vec::new();
    if keys.is_empty() && changes.is_empty() {
        return send;
    }
    for (other, state) in peers {
        if Some(*other) == from || &state.user != user {
            continue;
        }
        for record in keys {
            let messages = state.session.on_new_key(record);
            send.extend(messages.into_iter().map(|m| (*other, m)));
        }
        for change in changes {
            match state.session.on_new_change(change, replica) {
                Ok(messages) => send.extend(messages.into_iter().map(|m| (*other, m))),
                Err(e) => tracing::debug!(error = %e, "fan-out skipped a change"),
            }
        }
    }
    send
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use jarvis_crdt::DocId;
    use jarvis_crdt::doc::Doc;
    use jarvis_crdt::store::MemStore;
    use jarvis_identity::SecretKey;

    use super::*;

    struct Device {
        replica: Replica<MemStore>,
        session: Session,
    }

    fn device(age: age::x25519::Identity) -> Device {
        Device {
            replica: Replica::device(MemStore::new(), SecretKey::generate(), age),
            session: Session::new(),
        }
    }

    fn hub(limits: Limits) -> Hub<u32, MemStore> {
        Hub::new(limits, Box::new(|_| Ok(MemStore::new())))
    }

    /// Runs device ↔ hub traffic until it settles.
    fn settle<S: Store>(
        hub: &mut Hub<u32, S>,
        devices: &mut [(u32, &mut Device)],
        mut to_hub: Vec<(u32, SyncMessage)>,
        mut to_devices: Vec<(u32, SyncMessage)>,
    ) {
        for _ in 0..1000 {
            if to_hub.is_empty() && to_devices.is_empty() {
                return;
            }
            for (from, m) in std::mem::take(&mut to_hub) {
                let handled = hub.handle(from, &m.encode(), 0);
                handled.result.unwrap();
                to_devices.extend(handled.send);
            }
            for (to, m) in std::mem::take(&mut to_devices) {
                if let Some((_, d)) = devices.iter_mut().find(|(id, _)| *id == to) {
                    let out = d.session.handle(m, 0, &mut d.replica).unwrap();
                    to_hub.extend(out.send.into_iter().map(|m| (to, m)));
                }
            }
        }
        panic!("did not settle");
    }

    /// Admits `device` as peer `id` of `user` and syncs it with the hub until nothing is left.
    fn connect<S: Store>(hub: &mut Hub<u32, S>, id: u32, user: Name, device: &mut Device) {
        let to_device = hub.admit(id, user, 0).unwrap();
        let hello = device.session.start(0, &device.replica).unwrap();
        settle(
            hub,
            &mut [(id, device)],
            hello.into_iter().map(|m| (id, m)).collect(),
            to_device,
        );
    }

    fn alice() -> Name {
        Name::new("alice").unwrap()
    }

    /// Two devices of one user, and the recipients their conversations are sealed to.
    fn two_devices() -> (Device, Device, [age::x25519::Recipient; 2]) {
        let (aa, ab) = (
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        );
        let recipients = [aa.to_public(), ab.to_public()];
        (device(aa), device(ab), recipients)
    }

    fn conversation(device: &mut Device, title: &str, to: &[age::x25519::Recipient]) -> DocId {
        device
            .replica
            .create(|me| Doc::create_conversation(me, title, 0), to)
            .unwrap()
            .0
    }

    #[test]
    fn a_device_that_was_away_gets_everything_from_the_relay_alone() {
        let (mut a, mut b, recipients) = two_devices();
        let mut hub = hub(Limits::default());
        // A writes with B away, and syncs with the relay; then leaves.
        let id = conversation(&mut a, "secret plans", &recipients);
        connect(&mut hub, 1, alice(), &mut a);
        hub.leave(&1);
        // B comes back while A is gone.
        connect(&mut hub, 2, alice(), &mut b);
        assert_eq!(b.replica.doc(id).unwrap().title().unwrap(), "secret plans");
        // The running count of stored bytes is the store's own.
        let counted = hub.stored_bytes()[&alice()];
        assert!(counted > 0);
        assert_eq!(
            counted,
            hub.users[&alice()].replica.store().stored_bytes().unwrap()
        );
    }

    #[test]
    fn a_snapshot_replaces_the_history_it_covers_and_a_newcomer_gets_everything() {
        let (mut a, mut b, recipients) = two_devices();
        let mut hub = hub(Limits::default());
        let id = conversation(&mut a, "long talk", &recipients);
        for i in 0..200 {
            a.replica
                .edit(id, |doc, me| {
                    doc.append(
                        jarvis_crdt::doc::NewMessage {
                            id: &format!("m{i}"),
                            role: jarvis_crdt::doc::Role::User,
                            text: &format!("message {i}: what is the weather like tomorrow?"),
                            status: jarvis_crdt::doc::Status::Done,
                            now_ms: i,
                        },
                        me,
                    )
                })
                .unwrap();
        }
        connect(&mut hub, 1, alice(), &mut a);
        let before = hub.stored_bytes()[&alice()];

        // A compacts the conversation and offers the snapshot: the relay drops the changes it
        // covers, so what it stores shrinks.
        let snapshot = a.replica.snapshot(id).unwrap();
        let push = a.session.on_new_snapshot(&snapshot);
        settle(
            &mut hub,
            &mut [(1, &mut a)],
            push.into_iter().map(|m| (1, m)).collect(),
            Vec::new(),
        );
        let after = hub.stored_bytes()[&alice()];
        assert!(after < before / 2, "{after} of {before} bytes still stored");
        assert_eq!(
            after,
            hub.users[&alice()].replica.store().stored_bytes().unwrap(),
            "the count follows a snapshot's compaction without a rescan"
        );
        // A later edit is stored past the snapshot as usual.
        let change = a
            .replica
            .edit(id, |doc, _| doc.set_title("long talk, later", 1))
            .unwrap();
        let push = a.session.on_new_change(&change, &a.replica).unwrap();
        settle(
            &mut hub,
            &mut [(1, &mut a)],
            push.into_iter().map(|m| (1, m)).collect(),
            Vec::new(),
        );
        hub.leave(&1);

        // A device that had nothing gets the snapshot and the later change: all 200 messages.
        connect(&mut hub, 2, alice(), &mut b);
        let doc = b.replica.doc(id).unwrap();
        assert_eq!(doc.message_count().unwrap(), 200);
        assert_eq!(doc.title().unwrap(), "long talk, later");

        // A snapshot covering no more than the one held is not taken (a narrower one would need
        // history that is gone).
        let stored = hub.stored_bytes()[&alice()];
        let stale = SyncMessage::Snapshot { snapshot };
        let handled = hub.handle(2, &stale.encode(), 0);
        assert!(handled.result.is_ok());
        assert_eq!(hub.stored_bytes()[&alice()], stored);
    }

    /// #20 finding 9: an admitted device cannot raise the relay's vector past what it holds
    /// with a snapshot (which would drop that actor's next changes as duplicates and compact
    /// away history the snapshot need not contain). Before the fix the relay took it.
    #[test]
    fn a_snapshot_claiming_more_than_the_relay_holds_is_not_taken() {
        let (mut a, mut b, recipients) = two_devices();
        let mut hub = hub(Limits::default());
        let id = conversation(&mut a, "kept", &recipients);
        connect(&mut hub, 1, alice(), &mut a);
        let held = hub.users[&alice()].replica.store().vector(id).unwrap();
        let stored = hub.stored_bytes()[&alice()];
        let mut inflated = held.clone();
        for (actor, _) in held.iter() {
            inflated.set(*actor, 1_000_000);
        }
        let bogus = jarvis_crdt::envelope::SealedSnapshot::seal(
            id,
            1,
            inflated,
            b"nothing of the history",
            &jarvis_crdt::envelope::DocKey::generate(),
            &SecretKey::generate(),
        )
        .unwrap();
        let handled = hub.handle(1, &SyncMessage::Snapshot { snapshot: bogus }.encode(), 0);
        assert!(handled.result.is_ok());
        assert_eq!(
            hub.users[&alice()].replica.store().vector(id).unwrap(),
            held
        );
        assert_eq!(hub.stored_bytes()[&alice()], stored);

        // A's next edit is stored, not dropped as a duplicate, and reaches B.
        let change = a
            .replica
            .edit(id, |doc, _| doc.set_title("still kept", 1))
            .unwrap();
        let push = a.session.on_new_change(&change, &a.replica).unwrap();
        settle(
            &mut hub,
            &mut [(1, &mut a)],
            push.into_iter().map(|m| (1, m)).collect(),
            Vec::new(),
        );
        hub.leave(&1);
        connect(&mut hub, 2, alice(), &mut b);
        assert_eq!(b.replica.doc(id).unwrap().title().unwrap(), "still kept");
        // Key records and snapshots are counted as they are stored, with no rescan, and the
        // count is the store's own.
        assert_eq!(
            hub.stored_bytes()[&alice()],
            hub.users[&alice()].replica.store().stored_bytes().unwrap()
        );
    }

    /// A store that counts full scans (`stored_bytes`).
    struct Counting {
        inner: MemStore,
        scans: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Store for Counting {
        fn put_change(
            &mut self,
            change: &jarvis_crdt::SealedChange,
        ) -> Result<jarvis_crdt::Put, StoreError> {
            self.inner.put_change(change)
        }
        fn change(
            &self,
            doc: DocId,
            actor: &jarvis_identity::PublicKey,
            seq: u64,
        ) -> Result<Option<jarvis_crdt::SealedChange>, StoreError> {
            self.inner.change(doc, actor, seq)
        }
        fn vector(&self, doc: DocId) -> Result<jarvis_crdt::VersionVector, StoreError> {
            self.inner.vector(doc)
        }
        fn put_key(&mut self, record: &jarvis_crdt::KeyRecord) -> Result<bool, StoreError> {
            self.inner.put_key(record)
        }
        fn keys(&self, doc: DocId) -> Result<Vec<jarvis_crdt::KeyRecord>, StoreError> {
            self.inner.keys(doc)
        }
        fn put_snapshot(
            &mut self,
            snapshot: &jarvis_crdt::SealedSnapshot,
        ) -> Result<bool, StoreError> {
            self.inner.put_snapshot(snapshot)
        }
        fn snapshot(&self, doc: DocId) -> Result<Option<jarvis_crdt::SealedSnapshot>, StoreError> {
            self.inner.snapshot(doc)
        }
        fn compact(&mut self, doc: DocId) -> Result<u64, StoreError> {
            self.inner.compact(doc)
        }
        fn docs(&self) -> Result<Vec<DocId>, StoreError> {
            self.inner.docs()
        }
        fn stored_bytes(&self) -> Result<u64, StoreError> {
            self.scans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.stored_bytes()
        }
    }

    /// #20 finding 9: key records and snapshots from a device do not make the relay scan the
    /// user's whole store (before, every Keys or Snapshot message did: a cheap message costing
    /// the relay a read of up to the user's quota).
    #[test]
    fn key_records_and_snapshots_cost_no_scan_of_the_store() {
        let scans = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = scans.clone();
        let mut hub: Hub<u32, Counting> = Hub::new(
            Limits::default(),
            Box::new(move |_| {
                Ok(Counting {
                    inner: MemStore::new(),
                    scans: counter.clone(),
                })
            }),
        );
        let (mut a, _, recipients) = two_devices();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(conversation(&mut a, &format!("talk {i}"), &recipients));
        }
        connect(&mut hub, 1, alice(), &mut a);
        let opened = scans.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(opened, 1, "counted once, when the user's store opened");
        for id in ids {
            let snapshot = a.replica.snapshot(id).unwrap();
            let push = a.session.on_new_snapshot(&snapshot);
            settle(
                &mut hub,
                &mut [(1, &mut a)],
                push.into_iter().map(|m| (1, m)).collect(),
                Vec::new(),
            );
        }
        assert_eq!(scans.load(std::sync::atomic::Ordering::Relaxed), opened);
        let counted = hub.stored_bytes()[&alice()];
        assert_eq!(
            counted,
            hub.users[&alice()]
                .replica
                .store()
                .inner
                .stored_bytes()
                .unwrap()
        );
    }

    #[test]
    fn a_message_larger_than_the_burst_passes_once_the_bucket_is_full() {
        let limits = Limits {
            quota_bytes: u64::MAX,
            rate_bytes_per_sec: 1000,
            burst_bytes: 4000,
        };
        let mut bucket = Bucket::full(&limits, 0);
        // Full: a 10,000-byte message passes and leaves the bucket 6,000 in debt.
        assert_eq!(bucket.take(10_000, &limits, 0), Ok(()));
        // The next small one waits for the debt to be paid back at the rate.
        assert_eq!(bucket.take(1000, &limits, 0), Err(7000));
        assert_eq!(bucket.take(1000, &limits, 7000), Ok(()));
        // A large one waits for a full bucket, not for ever.
        assert_eq!(bucket.take(10_000, &limits, 7000), Err(4000));
        assert_eq!(bucket.take(10_000, &limits, 11_000), Ok(()));
    }

    #[test]
    fn an_edit_reaches_the_users_other_connected_device_at_once() {
        let (mut a, mut b, recipients) = two_devices();
        let mut hub = hub(Limits::default());
        let id = conversation(&mut a, "plans", &recipients);
        connect(&mut hub, 1, alice(), &mut a);
        connect(&mut hub, 2, alice(), &mut b);
        assert!(b.replica.doc(id).is_some());
        // A edits while both are connected: the hub pushes it to B, no resync needed.
        let change = a
            .replica
            .edit(id, |doc, _| doc.set_title("new plans", 1))
            .unwrap();
        let push = a.session.on_new_change(&change, &a.replica).unwrap();
        settle(
            &mut hub,
            &mut [(1, &mut a), (2, &mut b)],
            push.into_iter().map(|m| (1, m)).collect(),
            Vec::new(),
        );
        assert_eq!(b.replica.doc(id).unwrap().title().unwrap(), "new plans");
    }

    #[test]
    fn a_new_conversation_reaches_the_users_other_connected_device_at_once() {
        let (mut a, mut b, recipients) = two_devices();
        let mut hub = hub(Limits::default());
        connect(&mut hub, 1, alice(), &mut a);
        connect(&mut hub, 2, alice(), &mut b);
        // Its key and first change are pushed through the hub, no resync needed.
        let (id, record, change) = a
            .replica
            .create(|me| Doc::create_conversation(me, "fresh", 0), &recipients)
            .unwrap();
        let mut push = a.session.on_new_key(&record);
        push.extend(a.session.on_new_change(&change, &a.replica).unwrap());
        settle(
            &mut hub,
            &mut [(1, &mut a), (2, &mut b)],
            push.into_iter().map(|m| (1, m)).collect(),
            Vec::new(),
        );
        assert_eq!(b.replica.doc(id).unwrap().title().unwrap(), "fresh");
    }

    #[test]
    fn another_users_device_gets_nothing() {
        let (mut a, mut mallory, recipients) = two_devices();
        let mut hub = hub(Limits::default());
        conversation(&mut a, "alice only", &recipients[..1]);
        connect(&mut hub, 1, alice(), &mut a);
        connect(&mut hub, 2, Name::new("mallory").unwrap(), &mut mallory);
        assert!(mallory.replica.docs().unwrap().is_empty());
    }

    #[test]
    fn a_flooding_peer_is_rate_limited_and_a_full_quota_refuses_data() {
        let limits = Limits {
            quota_bytes: 10,
            rate_bytes_per_sec: 1000,
            burst_bytes: 2000,
        };
        let mut hub = hub(limits);
        assert_eq!(hub.handle(7, b"x", 0).result, Err(Refusal::NotAdmitted));
        hub.admit(7, alice(), 0).unwrap();
        // Garbage is refused with the reason, and costs the sender its bytes.
        let junk = vec![0xff_u8; 1500];
        assert!(matches!(
            hub.handle(7, &junk, 0).result,
            Err(Refusal::Malformed(_))
        ));
        match hub.handle(7, &junk, 0).result {
            Err(Refusal::RateLimited { retry_after_ms }) => assert_eq!(retry_after_ms, 1000),
            other => panic!("{other:?}"),
        }
        // A second later the bucket has refilled.
        assert!(matches!(
            hub.handle(7, &junk, 1000).result,
            Err(Refusal::Malformed(_))
        ));

        // Fill alice's quota, then more data is refused.
        let aa = age::x25519::Identity::generate();
        let mut a = device(aa.clone());
        for title in ["one", "two", "three"] {
            a.replica
                .create(
                    |me| Doc::create_conversation(me, title, 0),
                    &[aa.to_public()],
                )
                .unwrap();
        }
        let mut hub = hub_with_quota(10);
        let to_a = hub.admit(1, alice(), 0).unwrap();
        let mut to_hub: Vec<SyncMessage> = a.session.start(0, &a.replica).unwrap();
        for m in to_a {
            to_hub.extend(a.session.handle(m.1, 0, &mut a.replica).unwrap().send);
        }
        let mut refused = None;
        for _ in 0..20 {
            let mut next = Vec::new();
            for m in to_hub.drain(..) {
                let handled = hub.handle(1, &m.encode(), 0);
                if let Err(r) = handled.result {
                    refused = Some(r);
                }
                for (_, m) in handled.send {
                    next.extend(a.session.handle(m, 0, &mut a.replica).unwrap().send);
                }
            }
            to_hub = next;
        }
        assert!(
            matches!(refused, Some(Refusal::QuotaExceeded { quota: 10, .. })),
            "{refused:?}"
        );
    }

    fn hub_with_quota(quota_bytes: u64) -> Hub<u32, MemStore> {
        hub(Limits {
            quota_bytes,
            ..Limits::default()
        })
    }
}
