//! The admission core between two (or three) peers on a virtual clock: no sockets, no sleeping.
//! Each peer is an [`Admission`] with its own revocation set and policy; the harness carries
//! hellos and answers between them in the order a test chooses (crossing or one after the other)
//! and records what each side was told to do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use jarvis_identity::hello::{Checked, Hello};
use jarvis_identity::{
    CertChain, CertKind, CertTemplate, Certificate, DeviceKeys, Invite, Name, OrgInfo, Revocation,
    RevocationSet, RevocationTarget, Roles, SecretKey, UnixTime,
};
use jarvis_mesh::admission::{
    AUTH_DEADLINE, Admission, Answer, Context, Event, MAX_CLOSING, REFUSAL_GRACE, Reason, Refusal,
    RevocationsRefused, any_member,
};
use libp2p::PeerId;

const NOW: UnixTime = UnixTime(1_800_000_000);

struct Org {
    root: SecretKey,
    info: OrgInfo,
}

fn org() -> Org {
    let root = SecretKey::generate();
    let info = OrgInfo {
        name: Name::new("acme").unwrap(),
        root: root.public(),
        relays: vec![],
    };
    Org { root, info }
}

/// One side of a connection: its key and chain, what it knows, and how it decides.
struct Side {
    key: SecretKey,
    chain: CertChain,
    root: jarvis_identity::PublicKey,
    revocations: RevocationSet,
    admission: Admission,
    /// Kinds this side serves (`None`: every member).
    serves: Option<Vec<CertKind>>,
    /// Everything `poll` returned, in order.
    events: Vec<Event>,
}

impl Side {
    fn new(org: &Org, key: SecretKey, chain: CertChain) -> Self {
        Self {
            key,
            chain,
            root: org.info.root,
            revocations: RevocationSet::new(org.info.root),
            admission: Admission::new(),
            serves: None,
            events: Vec::new(),
        }
    }

    fn peer(&self) -> PeerId {
        self.key.public().to_libp2p_peer_id().unwrap()
    }

    fn hello(&self) -> Vec<u8> {
        Hello::new(self.chain.clone(), &self.revocations).encode(&self.root)
    }

    fn request(&mut self, from: PeerId, bytes: &[u8], now: Instant) -> Vec<u8> {
        let serves = self.serves.clone();
        let mut policy = move |_: &PeerId, checked: &Checked| match &serves {
            Some(kinds) if !kinds.contains(&checked.verified.kind) => Err(Reason::NotServed(
                format!("a {} is not served here", checked.verified.kind),
            )),
            _ => Ok(()),
        };
        let context = Context {
            root: &self.root,
            revocations: &mut self.revocations,
            unix: NOW,
            policy: &mut policy,
        };
        let answer = self.admission.on_request(from, bytes, context, now);
        self.drain();
        match answer {
            Answer::Hello => self.hello(),
            Answer::Refusal(bytes) => bytes,
        }
    }

    fn response(&mut self, from: PeerId, bytes: &[u8]) {
        let context = Context {
            root: &self.root,
            revocations: &mut self.revocations,
            unix: NOW,
            policy: &mut any_member,
        };
        self.admission.on_response(from, bytes, context);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(event) = self.admission.poll() {
            self.events.push(event);
        }
    }

    fn tick(&mut self, now: Instant) {
        self.admission.handle_timeout(now);
        self.drain();
    }

    fn disconnects(&self, peer: PeerId) -> usize {
        self.events
            .iter()
            .filter(|e| **e == Event::Disconnect(peer))
            .count()
    }

    fn admitted(&self, peer: PeerId) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Admitted { peer: p, .. } if *p == peer))
    }
}

fn device(org: &Org, user: &str) -> (SecretKey, CertChain) {
    let invite = Invite::create(
        org.info.clone(),
        None,
        &org.root,
        Name::new(user).unwrap(),
        Roles::MEMBER,
        NOW,
        NOW.saturating_add_secs(60),
    )
    .unwrap();
    let key = SecretKey::generate();
    let age = age::x25519::Identity::generate();
    let redeemed = invite
        .redeem(
            NOW,
            None,
            &DeviceKeys {
                key: key.public(),
                name: &Name::new("laptop").unwrap(),
                age_recipient: &age.to_public().to_string(),
            },
        )
        .unwrap();
    (key, redeemed.device_chain)
}

/// A relay, GPU peer or admin: certified by the root directly.
fn member(org: &Org, kind: CertKind, roles: Roles) -> (SecretKey, CertChain) {
    let key = SecretKey::generate();
    let cert = Certificate::issue(
        CertTemplate {
            kind,
            subject: key.public(),
            name: Name::new("member").unwrap(),
            roles,
            not_before: NOW,
            not_after: NOW.saturating_add_secs(3600),
            age_recipient: None,
        },
        &org.root,
    )
    .unwrap();
    (key, CertChain::new(vec![cert]).unwrap())
}

fn side(org: &Org, user: &str) -> Side {
    let (key, chain) = device(org, user);
    Side::new(org, key, chain)
}

/// Both connect; both hellos go out and cross: each side receives the other's request before
/// either answer arrives.
fn crossing(a: &mut Side, b: &mut Side, now: Instant) {
    let (pa, pb) = (a.peer(), b.peer());
    a.admission.connected(pb, now);
    b.admission.connected(pa, now);
    a.drain();
    b.drain();
    assert!(a.events.contains(&Event::SendHello(pb)));
    assert!(b.events.contains(&Event::SendHello(pa)));
    let (hello_a, hello_b) = (a.hello(), b.hello());
    let answer_b = b.request(pa, &hello_a, now);
    let answer_a = a.request(pb, &hello_b, now);
    a.response(pb, &answer_b);
    b.response(pa, &answer_a);
}

fn revoke(org: &Org, set: &mut RevocationSet, key: &SecretKey) {
    set.insert(
        Revocation::issue(
            RevocationTarget::Key(key.public()),
            "lost",
            NOW,
            None,
            &org.root,
        )
        .unwrap(),
    )
    .unwrap();
}

#[test]
fn two_members_admit_each_other_when_their_hellos_cross() {
    let acme = org();
    let (mut a, mut b) = (side(&acme, "alice"), side(&acme, "alice"));
    let t0 = Instant::now();
    crossing(&mut a, &mut b, t0);
    for (me, other) in [(&a, &b), (&b, &a)] {
        assert!(me.admitted(other.peer()), "{:?}", me.events);
        assert_eq!(
            me.admission.verified(&other.peer()).unwrap().kind,
            CertKind::Device
        );
        assert!(me.admission.accepted_us(&other.peer()));
        assert_eq!(me.disconnects(other.peer()), 0);
        // Admitted once, however many hellos.
        let admitted = me
            .events
            .iter()
            .filter(|e| matches!(e, Event::Admitted { .. }))
            .count();
        assert_eq!(admitted, 1);
        assert!(me.events.contains(&Event::AcceptedUs(other.peer())));
    }
    // Admitted peers are never timed out.
    a.tick(t0 + AUTH_DEADLINE * 3);
    assert_eq!(a.disconnects(b.peer()), 0);
    assert_eq!(a.admission.poll_timeout(), None);
}

#[test]
fn a_stranger_is_refused_with_a_reason_and_has_the_grace_to_read_it() {
    let acme = org();
    let globex = org();
    let mut ours = side(&acme, "alice");
    let mut stranger = side(&globex, "mallory");
    let t0 = Instant::now();
    let (po, ps) = (ours.peer(), stranger.peer());
    ours.admission.connected(ps, t0);
    stranger.admission.connected(po, t0);
    // The stranger's hello reaches us first; ours reaches it after.
    let answer = ours.request(ps, &stranger.hello(), t0);
    stranger.response(po, &answer);
    let theirs = stranger.request(po, &ours.hello(), t0);

    // We refused it, and told it why: no disconnect until the grace is over.
    let refusal = ours.admission.refusal(&ps).unwrap().clone();
    assert!(
        matches!(refusal, Refusal::ByUs(Reason::Hello(_))),
        "{refusal}"
    );
    assert_eq!(refusal.label(), "not-a-member");
    assert!(refusal.to_string().contains("another org"), "{refusal}");
    assert_eq!(ours.disconnects(ps), 0);
    assert_eq!(ours.admission.poll_timeout(), Some(t0 + REFUSAL_GRACE));
    ours.tick(t0 + REFUSAL_GRACE - Duration::from_millis(1));
    assert_eq!(ours.disconnects(ps), 0);
    ours.tick(t0 + REFUSAL_GRACE);
    assert_eq!(ours.disconnects(ps), 1);
    ours.tick(t0 + REFUSAL_GRACE * 5);
    assert_eq!(ours.disconnects(ps), 1, "disconnected once");

    // The stranger read the reason (typed: refused by the peer) and left at once.
    match stranger.admission.refusal(&po).unwrap() {
        Refusal::ByPeer(reason) => assert!(reason.contains("another org"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(stranger.disconnects(po), 1);
    // Its late hello to us, and ours to it, change nothing: refused stays refused.
    assert!(jarvis_identity::hello::decode_refusal(&theirs).is_some());
    let again = ours.request(ps, &stranger.hello(), t0);
    assert!(jarvis_identity::hello::decode_refusal(&again).is_some());
    assert!(!ours.admitted(ps));
}

#[test]
fn a_refusal_from_the_peer_ends_an_admission_even_when_the_hellos_crossed() {
    // We admit the peer; it knows our key is revoked (we do not yet) and refuses us.
    let acme = org();
    let mut revoked = side(&acme, "alice");
    let mut peer = side(&acme, "bob");
    revoke(&acme, &mut peer.revocations, &revoked.key);
    // `peer` does not send its revocations in this test's hello: build it from an empty set.
    let hello_peer =
        Hello::new(peer.chain.clone(), &RevocationSet::new(acme.info.root)).encode(&acme.info.root);
    let t0 = Instant::now();
    let (pr, pp) = (revoked.peer(), peer.peer());
    revoked.admission.connected(pp, t0);
    peer.admission.connected(pr, t0);
    // Crossing: we admit it before its refusal of our hello arrives.
    let ours_answer = revoked.request(pp, &hello_peer, t0);
    assert!(jarvis_identity::hello::decode_refusal(&ours_answer).is_none());
    assert!(revoked.admitted(pp));
    let refusal = peer.request(pr, &revoked.hello(), t0);
    assert!(peer.admission.refusal(&pr).unwrap().label() == "revoked");
    revoked.response(pp, &refusal);
    assert!(matches!(
        revoked.admission.refusal(&pp),
        Some(Refusal::ByPeer(reason)) if reason.contains("revoked")
    ));
    assert_eq!(revoked.admission.verified(&pp), None);
    assert!(revoked.events.iter().any(|e| matches!(
        e,
        Event::Refused {
            refusal: Refusal::ByPeer(_),
            ..
        }
    )));
    assert_eq!(revoked.disconnects(pp), 1);
    // Its answer to our hello (crossing) finds us refused already: nothing more happens.
    peer.response(pr, &ours_answer);
    assert!(!peer.admitted(pr));
}

#[test]
fn a_peer_that_says_nothing_is_disconnected_at_the_deadline() {
    let acme = org();
    let mut ours = side(&acme, "alice");
    let silent = side(&acme, "alice");
    let prompt = side(&acme, "alice");
    let t0 = Instant::now();
    ours.admission.connected(silent.peer(), t0);
    ours.admission
        .connected(prompt.peer(), t0 + Duration::from_secs(5));
    ours.drain();
    assert_eq!(ours.admission.pending(), 2);
    assert_eq!(ours.admission.poll_timeout(), Some(t0 + AUTH_DEADLINE));
    ours.tick(t0 + AUTH_DEADLINE - Duration::from_millis(1));
    assert_eq!(ours.disconnects(silent.peer()), 0);
    // The prompt one says hello in time.
    ours.request(prompt.peer(), &prompt.hello(), t0 + Duration::from_secs(9));
    ours.tick(t0 + AUTH_DEADLINE);
    assert_eq!(ours.disconnects(silent.peer()), 1);
    assert_eq!(
        ours.admission.refusal(&silent.peer()),
        Some(&Refusal::Silent)
    );
    assert_eq!(Refusal::Silent.label(), "auth-timeout");
    ours.tick(t0 + AUTH_DEADLINE * 2);
    assert_eq!(ours.disconnects(prompt.peer()), 0);
    assert!(ours.admitted(prompt.peer()));
    // Forgotten once its connection closes; a new connection starts over.
    ours.admission.closed(&silent.peer());
    assert_eq!(ours.admission.refusal(&silent.peer()), None);
    ours.events.clear();
    ours.admission
        .connected(silent.peer(), t0 + AUTH_DEADLINE * 2);
    ours.drain();
    assert_eq!(ours.events, vec![Event::SendHello(silent.peer())]);
}

#[test]
fn revocation_learned_while_connected_refuses_the_revoked_peer_at_once() {
    let acme = org();
    let mut relay = {
        let (key, chain) = member(&acme, CertKind::Relay, Roles::RELAY);
        Side::new(&acme, key, chain)
    };
    let mut lost = side(&acme, "alice");
    let mut admin = side(&acme, "root-admin");
    let t0 = Instant::now();
    crossing(&mut relay, &mut lost, t0);
    assert!(relay.admitted(lost.peer()));
    // The admin knows a revocation of the lost laptop: its hello says so by its digest, and
    // once admitted the two exchange sets.
    revoke(&acme, &mut admin.revocations, &lost.key);
    relay.admission.connected(admin.peer(), t0);
    relay.request(admin.peer(), &admin.hello(), t0 + Duration::from_secs(1));
    assert!(relay.admitted(admin.peer()));
    assert!(
        relay
            .events
            .contains(&Event::ExchangeRevocations(admin.peer())),
        "sets differ: an exchange is asked for"
    );
    assert!(!relay.revocations.is_key_revoked(&lost.key.public()));
    let added = relay
        .admission
        .on_revocations(
            admin.peer(),
            &admin.revocations.encode(),
            Context {
                root: &acme.info.root,
                revocations: &mut relay.revocations,
                unix: NOW,
                policy: &mut any_member,
            },
        )
        .unwrap();
    assert_eq!(added, 1);
    relay.drain();
    assert!(relay.events.contains(&Event::RevocationsLearned {
        from: admin.peer(),
        added: 1
    }));
    assert!(relay.revocations.is_key_revoked(&lost.key.public()));
    assert_eq!(
        relay.admission.refusal(&lost.peer()),
        Some(&Refusal::ByUs(Reason::Revoked))
    );
    assert_eq!(relay.disconnects(lost.peer()), 1, "at once, no grace");
    assert!(relay.admitted(admin.peer()));
    assert_eq!(relay.admission.admitted().count(), 1);
    // Its next hello (a reconnect) fails the chain check: revoked.
    let mut fresh = Admission::new();
    fresh.connected(lost.peer(), t0);
    let answer = fresh.on_request(
        lost.peer(),
        &lost.hello(),
        Context {
            root: &acme.info.root,
            revocations: &mut relay.revocations,
            unix: NOW,
            policy: &mut any_member,
        },
        t0,
    );
    assert!(matches!(answer, Answer::Refusal(_)));
    assert_eq!(fresh.refusal(&lost.peer()).unwrap().label(), "revoked");

    // `enforce`, for revocations learned elsewhere (an admin's file): the same.
    let other = side(&acme, "bob");
    let mut gpu = {
        let (key, chain) = member(&acme, CertKind::Gpu, Roles::GPU);
        Side::new(&acme, key, chain)
    };
    let mut other = other;
    crossing(&mut gpu, &mut other, t0);
    let mut set = gpu.revocations.clone();
    revoke(&acme, &mut set, &other.key);
    gpu.admission.enforce(&set);
    gpu.drain();
    assert_eq!(gpu.disconnects(other.peer()), 1);
}

#[test]
fn the_policy_refuses_members_this_peer_does_not_serve() {
    let acme = org();
    let mut gpu = {
        let (key, chain) = member(&acme, CertKind::Gpu, Roles::GPU);
        Side::new(&acme, key, chain)
    };
    gpu.serves = Some(vec![CertKind::Device, CertKind::Relay]);
    let mut admin = {
        let (key, chain) = member(&acme, CertKind::Admin, Roles::ADMIN);
        Side::new(&acme, key, chain)
    };
    let mut laptop = side(&acme, "alice");
    let t0 = Instant::now();
    crossing(&mut gpu, &mut admin, t0);
    crossing(&mut gpu, &mut laptop, t0);
    assert!(gpu.admitted(laptop.peer()));
    let refusal = gpu.admission.refusal(&admin.peer()).unwrap();
    assert_eq!(refusal.label(), "not-served");
    assert!(matches!(
        admin.admission.refusal(&gpu.peer()),
        Some(Refusal::ByPeer(reason)) if reason.contains("not served")
    ));
}

#[test]
fn refused_peers_waiting_out_their_grace_are_bounded() {
    let acme = org();
    let globex = org();
    let mut ours = side(&acme, "alice");
    let t0 = Instant::now();
    let strangers: Vec<Side> = (0..MAX_CLOSING + 3).map(|_| side(&globex, "x")).collect();
    // One stranger's hello, replayed from many connections (keys): each fails for the key too.
    for s in &strangers {
        ours.request(s.peer(), &s.hello(), t0);
    }
    let at_once = strangers
        .iter()
        .filter(|s| ours.disconnects(s.peer()) == 1)
        .count();
    assert_eq!(at_once, 3, "beyond MAX_CLOSING, refused peers go at once");
    // A refusal that could not be sent: nothing to wait for.
    let late = side(&globex, "y");
    ours.admission.closed(&strangers[0].peer());
    ours.request(late.peer(), &late.hello(), t0);
    ours.admission.answer_failed(&late.peer());
    ours.drain();
    assert_eq!(ours.disconnects(late.peer()), 1);
    ours.tick(t0 + REFUSAL_GRACE);
    assert_eq!(ours.disconnects(late.peer()), 1);
    assert_eq!(ours.disconnects(strangers[1].peer()), 1);
}

/// #20 findings 5 and 6: a revocation set is taken only from an admitted peer (so a stranger's
/// set is not even decoded, whatever it announces), the same digest is not asked for twice, and
/// what is learned is pushed to the other admitted peers.
#[test]
fn revocations_are_exchanged_only_with_members_and_pushed_to_the_others() {
    let acme = org();
    let globex = org();
    let mut relay = {
        let (key, chain) = member(&acme, CertKind::Relay, Roles::RELAY);
        Side::new(&acme, key, chain)
    };
    let mut laptop = side(&acme, "alice");
    let mut phone = side(&acme, "bob");
    let stranger = side(&globex, "mallory");
    let t0 = Instant::now();
    crossing(&mut relay, &mut laptop, t0);
    crossing(&mut relay, &mut phone, t0);
    assert!(relay.admitted(laptop.peer()) && relay.admitted(phone.peer()));
    // Same (empty) sets: no exchange.
    assert!(
        !relay
            .events
            .iter()
            .any(|e| matches!(e, Event::ExchangeRevocations(_)))
    );

    // A stranger's set: not taken (not even decoded), however it is sent.
    let mut forged = RevocationSet::new(acme.info.root);
    revoke(&acme, &mut forged, &laptop.key);
    relay.admission.connected(stranger.peer(), t0);
    let refused = relay.admission.on_revocations(
        stranger.peer(),
        &forged.encode(),
        Context {
            root: &acme.info.root,
            revocations: &mut relay.revocations,
            unix: NOW,
            policy: &mut any_member,
        },
    );
    assert_eq!(refused, Err(RevocationsRefused::NotAdmitted));
    assert!(relay.revocations.is_empty());

    // The laptop learns a revocation (of someone else) and says so in a new hello: one exchange
    // for that digest, however often the hello comes.
    let other = SecretKey::generate();
    revoke(&acme, &mut laptop.revocations, &other);
    relay.events.clear();
    relay.request(laptop.peer(), &laptop.hello(), t0);
    relay.request(laptop.peer(), &laptop.hello(), t0);
    let asked = |side: &Side, peer: PeerId| {
        side.events
            .iter()
            .filter(|e| **e == Event::ExchangeRevocations(peer))
            .count()
    };
    assert_eq!(asked(&relay, laptop.peer()), 1);
    relay.events.clear();
    let added = relay
        .admission
        .on_revocations(
            laptop.peer(),
            &laptop.revocations.encode(),
            Context {
                root: &acme.info.root,
                revocations: &mut relay.revocations,
                unix: NOW,
                policy: &mut any_member,
            },
        )
        .unwrap();
    assert_eq!(added, 1);
    relay.drain();
    // Pushed to the phone, not back to the laptop.
    assert_eq!(asked(&relay, phone.peer()), 1);
    assert_eq!(asked(&relay, laptop.peer()), 0);
    // Garbage from a member is an error, not a panic, and changes nothing.
    assert!(
        relay
            .admission
            .on_revocations(
                laptop.peer(),
                b"not a set",
                Context {
                    root: &acme.info.root,
                    revocations: &mut relay.revocations,
                    unix: NOW,
                    policy: &mut any_member,
                },
            )
            .is_err()
    );
    assert_eq!(relay.revocations.len(), 1);
}
