//! Admission: who the peer of a connection is, and whether it is let in. One sans-IO state
//! machine per peer, used by the node, the relay and the GPU peer alike, so that the rules of the
//! gate are written once.
//!
//! The protocol (`/jarvis/auth/1`, see [`crate::wire`]): as soon as a connection is up, each side
//! sends its [`Hello`](jarvis_identity::hello::Hello) as a request; each answers the other's with
//! its own hello (admitted) or with a refusal that says why. The two requests cross on the wire,
//! so either side may learn the other's verdict first. The rules:
//!
//! - A peer is admitted when its chain verifies against the org root and the revocations known
//!   (merged with those its hello carried), certifies the key the transport authenticated, and
//!   the caller's [`Policy`] accepts it (a GPU peer serves devices; a relay checks invite claims).
//! - A refusal is final for the connection: a hello checking out afterwards (crossing hellos)
//!   changes nothing, and a refusal from the peer ends an admission already granted.
//! - A peer we refused has [`REFUSAL_GRACE`] to read why and leave before it is disconnected
//!   (closing at once could drop the refusal unsent); at most [`MAX_CLOSING`] wait so at once.
//! - A peer that says nothing for [`AUTH_DEADLINE`] after connecting is disconnected.
//! - Revocations are exchanged only with admitted peers ([`Event::ExchangeRevocations`] when a
//!   hello's digest differs from ours; [`Admission::on_revocations`] merges what one sends), and
//!   what is learned is enforced at once on every admitted peer and pushed to the others.
//!
//! The shell feeds it what happens ([`Admission::connected`], [`Admission::on_request`],
//! [`Admission::on_response`], [`Admission::handle_timeout`], [`Admission::closed`]) and carries
//! out what [`Admission::poll`] returns: send a hello, disconnect, and tell the rest of the
//! program who was admitted or refused. Time is passed in, never read, so the tests run on a
//! virtual clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use jarvis_identity::hello::{Checked, HelloError, check_hello, decode_refusal, encode_refusal};
use jarvis_identity::revocation::RevocationSetError;
use jarvis_identity::{CertChain, PublicKey, RevocationSet, UnixTime, Verified};
use libp2p::PeerId;

/// A peer (relay, node, GPU peer alike) that has not said who it is this long after connecting
/// is disconnected: until then it is held unanswered, and it must not hold a connection for
/// free.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// How long a peer we refused has to read why before it is disconnected.
pub const REFUSAL_GRACE: Duration = Duration::from_secs(2);
/// Refused peers given [`REFUSAL_GRACE`] at once; beyond it, a refused peer is disconnected
/// without waiting (a flood of strangers must not grow the list).
pub const MAX_CLOSING: usize = 1024;

/// Why we refuse a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Its hello proves no membership: malformed, another org, forged, expired, revoked, or a
    /// chain for another key.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// Admitted, then revoked while connected.
    #[error("revoked")]
    Revoked,
    /// A device whose invite was claimed by another user already.
    #[error("{0}")]
    InviteClaimed(String),
    /// A member of a kind this peer does not serve (an admin asking a GPU peer for answers).
    #[error("{0}")]
    NotServed(String),
    /// The check could not be made here (a database error): the peer may try again later.
    #[error("{0}")]
    CannotCheck(String),
}

impl Reason {
    /// A label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Hello(e) if e.is_revoked() => "revoked",
            Self::Hello(_) => "not-a-member",
            Self::Revoked => "revoked",
            Self::InviteClaimed(_) => "invite-claimed",
            Self::NotServed(_) => "not-served",
            Self::CannotCheck(_) => "cannot-check",
        }
    }
}

/// Why a connection ended up refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// We refused the peer.
    #[error("{0}")]
    ByUs(Reason),
    /// The peer refused our hello, and said why (already cleaned of control characters and
    /// bounded: it came from the network).
    #[error("the peer refused us: {0}")]
    ByPeer(String),
    /// The peer said nothing within [`AUTH_DEADLINE`].
    #[error("said nothing within {} s of connecting", AUTH_DEADLINE.as_secs())]
    Silent,
}

impl Refusal {
    /// A label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ByUs(reason) => reason.label(),
            Self::ByPeer(_) => "refused-us",
            Self::Silent => "auth-timeout",
        }
    }
}

/// Decides whether a member that proved who it is may in. Called for every verified hello (a
/// peer re-sends its hello when it learns revocations), so it must be cheap and idempotent.
pub trait Policy {
    fn admit(&mut self, peer: &PeerId, checked: &Checked) -> Result<(), Reason>;
}

impl<F: FnMut(&PeerId, &Checked) -> Result<(), Reason>> Policy for F {
    fn admit(&mut self, peer: &PeerId, checked: &Checked) -> Result<(), Reason> {
        self(peer, checked)
    }
}

/// Every member of the org may in (the node: what it serves each is decided per protocol).
pub fn any_member(_: &PeerId, _: &Checked) -> Result<(), Reason> {
    Ok(())
}

/// What a hello is checked against: the org root, the revocations known (merged with those the
/// peer sends, so they change), the time of day for certificate validity, and the policy.
pub struct Context<'a> {
    pub root: &'a PublicKey,
    pub revocations: &'a mut RevocationSet,
    pub unix: UnixTime,
    pub policy: &'a mut dyn Policy,
}

/// What to answer a peer's hello with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Our own hello: the peer is admitted.
    Hello,
    /// This encoded refusal.
    Refusal(Vec<u8>),
}

/// What the shell must do, or learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send our hello to the peer (a request on the auth protocol).
    SendHello(PeerId),
    /// The peer proved who it is and may in (once per connection).
    Admitted {
        peer: PeerId,
        verified: Verified,
        /// The chain that proved it.
        chain: CertChain,
        /// The peer's age recipient, when it is a device.
        age_recipient: Option<String>,
    },
    /// The peer answered our hello with its own: it admitted us (once per connection).
    AcceptedUs(PeerId),
    /// The peer is refused, by us or by it (once per connection): stop serving it.
    Refused { peer: PeerId, refusal: Refusal },
    /// Close every connection to the peer.
    Disconnect(PeerId),
    /// Send the peer our revocation set (a request on the revocations protocol; its answer is
    /// its own set, for [`Admission::on_revocations`]): its hello's digest differs from ours, or
    /// we learned something it may not know.
    ExchangeRevocations(PeerId),
    /// A peer's set held revocations we did not know, already merged into the caller's set (and
    /// enforced on the admitted peers, and pushed to the others): keep the set.
    RevocationsLearned { from: PeerId, added: usize },
}

/// Why a revocation set from a peer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationsRefused {
    #[error("not admitted: only members exchange revocations")]
    NotAdmitted,
    #[error(transparent)]
    Set(#[from] RevocationSetError),
}

#[derive(Debug)]
enum State {
    /// Connected; nothing proven yet.
    Pending,
    Admitted(Verified),
    /// Refused; `close_at` while the refused peer has time to read why.
    Refused {
        refusal: Refusal,
        close_at: Option<Instant>,
    },
}

#[derive(Debug)]
struct Connection {
    state: State,
    since: Instant,
    hello_sent: bool,
    accepted_us: bool,
    /// The peer's digest we last started an exchange for (one exchange per digest: a set that
    /// keeps differing, because we refuse some of its records, is not asked for again and again).
    exchanged_for: Option<[u8; 32]>,
}

/// The admission state of every connected peer.
#[derive(Debug, Default)]
pub struct Admission {
    peers: HashMap<PeerId, Connection>,
    events: VecDeque<Event>,
}

impl Admission {
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection to `peer` came up: our hello goes out (once per peer, however many
    /// connections it has).
    pub fn connected(&mut self, peer: PeerId, now: Instant) {
        let connection = self.peers.entry(peer).or_insert(Connection {
            state: State::Pending,
            since: now,
            hello_sent: false,
            accepted_us: false,
            exchanged_for: None,
        });
        if !connection.hello_sent {
            connection.hello_sent = true;
            self.events.push_back(Event::SendHello(peer));
        }
    }

    /// The last connection to `peer` closed: it is forgotten.
    pub fn closed(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// The peer's hello (a request): checked, and what to answer it with.
    pub fn on_request(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        context: Context<'_>,
        now: Instant,
    ) -> Answer {
        self.connected(peer, now);
        if let Some(refusal) = self.refusal(&peer) {
            // Refused already (a second hello, or one crossing ours): the verdict stands.
            return Answer::Refusal(encode_refusal(&refusal.to_string()));
        }
        match self.check(peer, bytes, context) {
            Ok((checked, ours)) => {
                self.admit(peer, checked, ours);
                Answer::Hello
            }
            Err(reason) => {
                let answer = Answer::Refusal(encode_refusal(&reason.to_string()));
                self.refuse(peer, Refusal::ByUs(reason), Some(now + REFUSAL_GRACE));
                answer
            }
        }
    }

    /// The peer's answer to our hello: its own hello (it admitted us), or a refusal.
    pub fn on_response(&mut self, peer: PeerId, bytes: &[u8], context: Context<'_>) {
        if !self.peers.contains_key(&peer) || self.refusal(&peer).is_some() {
            return;
        }
        if let Some(reason) = decode_refusal(bytes) {
            self.refuse(peer, Refusal::ByPeer(reason), None);
            return;
        }
        match self.check(peer, bytes, context) {
            Ok((checked, ours)) => {
                self.admit(peer, checked, ours);
                if let Some(connection) = self.peers.get_mut(&peer)
                    && matches!(connection.state, State::Admitted(_))
                    && !connection.accepted_us
                {
                    connection.accepted_us = true;
                    self.events.push_back(Event::AcceptedUs(peer));
                }
            }
            Err(reason) => self.refuse(peer, Refusal::ByUs(reason), None),
        }
    }

    /// A revocation set from the peer (its request on the revocations protocol, or its answer
    /// to ours). Taken only from an admitted peer, each record only if it is good now
    /// ([`RevocationSet::merge_received`]); what is new is enforced on every admitted peer at
    /// once (the sender too, if its own set revokes it) and pushed to the other admitted peers.
    /// Returns how many records were new.
    pub fn on_revocations(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        context: Context<'_>,
    ) -> Result<usize, RevocationsRefused> {
        if self.verified(&peer).is_none() {
            return Err(RevocationsRefused::NotAdmitted);
        }
        let added = context
            .revocations
            .merge_received_bytes(bytes, context.unix)?;
        if added > 0 {
            self.events
                .push_back(Event::RevocationsLearned { from: peer, added });
            self.enforce(context.revocations);
            let others: Vec<PeerId> = self
                .admitted()
                .map(|(other, _)| *other)
                .filter(|other| *other != peer)
                .collect();
            self.events
                .extend(others.into_iter().map(Event::ExchangeRevocations));
        }
        Ok(added)
    }

    /// Revocations learned outside any connection (a relay fleet's shared database), already
    /// merged into `revocations`: enforced on every admitted peer at once and pushed to every
    /// other admitted peer, as [`Self::on_revocations`] does for a set a peer sent.
    pub fn learned_revocations(&mut self, revocations: &RevocationSet) {
        self.enforce(revocations);
        let all: Vec<PeerId> = self.admitted().map(|(peer, _)| *peer).collect();
        self.events
            .extend(all.into_iter().map(Event::ExchangeRevocations));
    }

    /// Our answer to the peer's hello could not be sent: a refused peer has nothing to wait
    /// for.
    pub fn answer_failed(&mut self, peer: &PeerId) {
        if let Some(Connection {
            state: State::Refused { close_at, .. },
            ..
        }) = self.peers.get_mut(peer)
            && close_at.take().is_some()
        {
            self.events.push_back(Event::Disconnect(*peer));
        }
    }

    /// Refuses a peer for a reason found outside the hello (the relay could not give it a
    /// store); it is disconnected at once.
    pub fn refuse_now(&mut self, peer: PeerId, reason: Reason) {
        if self.peers.contains_key(&peer) && self.refusal(&peer).is_none() {
            self.refuse(peer, Refusal::ByUs(reason), None);
        }
    }

    /// Refuses (and disconnects) every admitted peer that `revocations` now covers: its key,
    /// its user's key, or its user.
    pub fn enforce(&mut self, revocations: &RevocationSet) {
        let revoked: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, c)| match &c.state {
                State::Admitted(v) => {
                    revocations.is_key_revoked(&v.subject)
                        || v.user_key.is_some_and(|k| revocations.is_key_revoked(&k))
                        || v.user
                            .as_ref()
                            .is_some_and(|u| revocations.is_user_revoked(u))
                }
                _ => false,
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in revoked {
            self.refuse(peer, Refusal::ByUs(Reason::Revoked), None);
        }
    }

    /// Disconnects the silent (no word within [`AUTH_DEADLINE`]) and the refused whose grace
    /// is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut silent = Vec::new();
        for (peer, connection) in &mut self.peers {
            match &mut connection.state {
                State::Pending if now.duration_since(connection.since) >= AUTH_DEADLINE => {
                    silent.push(*peer);
                }
                State::Refused { close_at, .. } if close_at.is_some_and(|at| at <= now) => {
                    *close_at = None;
                    self.events.push_back(Event::Disconnect(*peer));
                }
                _ => {}
            }
        }
        for peer in silent {
            self.refuse(peer, Refusal::Silent, None);
        }
    }

    /// When [`Admission::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|c| match &c.state {
                State::Pending => Some(c.since + AUTH_DEADLINE),
                State::Refused { close_at, .. } => *close_at,
                State::Admitted(_) => None,
            })
            .min()
    }

    /// What to do next.
    pub fn poll(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Who the peer proved to be, when it is admitted.
    pub fn verified(&self, peer: &PeerId) -> Option<&Verified> {
        match &self.peers.get(peer)?.state {
            State::Admitted(v) => Some(v),
            _ => None,
        }
    }

    /// Why the peer was refused, when it was.
    pub fn refusal(&self, peer: &PeerId) -> Option<&Refusal> {
        match &self.peers.get(peer)?.state {
            State::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }

    /// Whether the peer answered our hello with its own (a relay then serves us reservations).
    pub fn accepted_us(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|c| c.accepted_us)
    }

    /// The admitted peers.
    pub fn admitted(&self) -> impl Iterator<Item = (&PeerId, &Verified)> {
        self.peers.iter().filter_map(|(p, c)| match &c.state {
            State::Admitted(v) => Some((p, v)),
            _ => None,
        })
    }

    /// Peers connected and not proven yet.
    pub fn pending(&self) -> usize {
        self.peers
            .values()
            .filter(|c| matches!(c.state, State::Pending))
            .count()
    }

    fn check(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        context: Context<'_>,
    ) -> Result<(Checked, [u8; 32]), Reason> {
        let Context {
            root,
            revocations,
            unix,
            policy,
        } = context;
        let checked = check_hello(root, revocations, peer, bytes, unix)?;
        policy.admit(&peer, &checked)?;
        Ok((checked, revocations.digest()))
    }

    /// Admits the peer (if it is not refused) and, when its set differs from ours (`ours`: our
    /// digest), asks for an exchange once per digest it announces: a set that keeps differing
    /// because we refuse some of its records is not asked for again and again.
    fn admit(&mut self, peer: PeerId, checked: Checked, ours: [u8; 32]) {
        let Some(connection) = self.peers.get_mut(&peer) else {
            return;
        };
        let exchange = checked.digest != ours
            && connection.exchanged_for != Some(checked.digest)
            && !matches!(connection.state, State::Refused { .. });
        if exchange {
            connection.exchanged_for = Some(checked.digest);
        }
        match &mut connection.state {
            State::Pending => {
                connection.state = State::Admitted(checked.verified.clone());
                self.events.push_back(Event::Admitted {
                    peer,
                    verified: checked.verified,
                    chain: checked.chain,
                    age_recipient: checked.age_recipient,
                });
            }
            State::Admitted(verified) => *verified = checked.verified,
            State::Refused { .. } => {}
        }
        // After `Admitted`: the shell opens the gates (the revocations protocol among them)
        // before it sends.
        if exchange {
            self.events.push_back(Event::ExchangeRevocations(peer));
        }
    }

    /// `close_at`: the refusal goes back as our answer, so the peer has until then to read it;
    /// `None`: it is disconnected at once.
    fn refuse(&mut self, peer: PeerId, refusal: Refusal, close_at: Option<Instant>) {
        let closing = self
            .peers
            .values()
            .filter(|c| {
                matches!(
                    c.state,
                    State::Refused {
                        close_at: Some(_),
                        ..
                    }
                )
            })
            .count();
        let Some(connection) = self.peers.get_mut(&peer) else {
            return;
        };
        if matches!(connection.state, State::Refused { .. }) {
            return;
        }
        let close_at = close_at.filter(|_| closing < MAX_CLOSING);
        connection.state = State::Refused {
            refusal: refusal.clone(),
            close_at,
        };
        self.events.push_back(Event::Refused { peer, refusal });
        if close_at.is_none() {
            self.events.push_back(Event::Disconnect(peer));
        }
    }
}
