//! #20 finding 4: a revoked or expired admin cannot revoke anyone, and the org root can undo a
//! wrongful revocation. Each test here failed on the code before the fix (every well-signed
//! record counted for ever, whoever signed it and whenever it arrived).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use jarvis_identity::{
    CertChain, CertKind, CertTemplate, Certificate, Name, PublicKey, Revocation, RevocationError,
    RevocationSet, RevocationTarget, Roles, SecretKey, UnixTime,
};

const NOW: UnixTime = UnixTime(1_800_000_000);
const DAY: u64 = 24 * 3600;

struct Org {
    root: SecretKey,
}

struct Admin {
    key: SecretKey,
    chain: CertChain,
}

impl Org {
    fn new() -> Self {
        Self {
            root: SecretKey::generate(),
        }
    }

    fn root(&self) -> PublicKey {
        self.root.public()
    }

    /// An admin valid from `NOW` for `days`.
    fn admin(&self, name: &str, days: u64) -> Admin {
        let key = SecretKey::generate();
        let cert = Certificate::issue(
            CertTemplate {
                kind: CertKind::Admin,
                subject: key.public(),
                name: Name::new(name).unwrap(),
                roles: Roles::ADMIN,
                not_before: NOW,
                not_after: NOW.saturating_add_secs(days * DAY),
                age_recipient: None,
            },
            &self.root,
        )
        .unwrap();
        Admin {
            key,
            chain: CertChain::new(vec![cert]).unwrap(),
        }
    }

    fn by_root(&self, target: RevocationTarget, at: UnixTime) -> Revocation {
        Revocation::issue(target, "", at, None, &self.root).unwrap()
    }
}

impl Admin {
    fn revokes(&self, target: RevocationTarget, at: UnixTime) -> Revocation {
        Revocation::issue(target, "by an admin", at, Some(&self.chain), &self.key).unwrap()
    }

    fn id(&self) -> PublicKey {
        self.key.public()
    }
}

fn at(days: u64) -> UnixTime {
    NOW.saturating_add_secs(days * DAY)
}

fn key() -> PublicKey {
    SecretKey::generate().public()
}

fn set_of(org: &Org, records: &[&Revocation]) -> RevocationSet {
    let mut set = RevocationSet::new(org.root());
    for record in records {
        set.insert((*record).clone()).unwrap();
    }
    set
}

#[test]
fn a_fired_admins_records_dated_after_the_firing_count_for_nothing() {
    let org = Org::new();
    let mallory = org.admin("mallory", 365);
    let laptop = key();
    let fired = org.by_root(RevocationTarget::Key(mallory.id()), at(10));
    let spite = mallory.revokes(RevocationTarget::Key(laptop), at(20));

    // Whatever order a device learns them in, the same answer.
    for set in [
        set_of(&org, &[&fired, &spite]),
        set_of(&org, &[&spite, &fired]),
    ] {
        assert!(set.is_key_revoked(&mallory.id()));
        assert!(
            !set.is_key_revoked(&laptop),
            "a record signed after its signer was revoked revokes nothing"
        );
        assert!(!set.in_force(&spite));
        assert_eq!(set.ignored(), 1);
        // Held all the same (the digest is over what is held, so peers still agree).
        assert_eq!(set.len(), 2);
    }
}

#[test]
fn a_record_from_before_the_firing_stays_in_force() {
    let org = Org::new();
    let admin = org.admin("dana", 365);
    let lost = key();
    let earlier = admin.revokes(RevocationTarget::Key(lost), at(5));
    let fired = org.by_root(RevocationTarget::Key(admin.id()), at(10));
    let set = set_of(&org, &[&fired, &earlier]);
    assert!(set.is_key_revoked(&lost));
    assert!(set.in_force(&earlier));
}

#[test]
fn two_admins_revoking_each_other_have_one_answer_the_earlier() {
    let org = Org::new();
    let alice = org.admin("alice", 365);
    let bob = org.admin("bob", 365);
    let first = alice.revokes(RevocationTarget::Key(bob.id()), at(1));
    let back = bob.revokes(RevocationTarget::Key(alice.id()), at(2));
    for set in [
        set_of(&org, &[&first, &back]),
        set_of(&org, &[&back, &first]),
    ] {
        assert!(set.is_key_revoked(&bob.id()));
        assert!(!set.is_key_revoked(&alice.id()));
    }
}

#[test]
fn a_fired_admin_cannot_back_date_a_record_into_a_device_that_knows() {
    let org = Org::new();
    let mallory = org.admin("mallory", 365);
    let ceo = key();
    let fired = org.by_root(RevocationTarget::Key(mallory.id()), at(10));
    let mut device = set_of(&org, &[&fired]);

    // Signed after the firing but dated before it: well formed, and dated in mallory's window.
    let backdated = mallory.revokes(RevocationTarget::Key(ceo), at(3));
    assert!(backdated.verify(&org.root()).is_ok());
    let from_peer = set_of(&org, &[&backdated]);
    assert_eq!(device.merge_received(&from_peer, at(30)).unwrap(), 0);
    assert!(!device.is_key_revoked(&ceo));
    assert_eq!(device.len(), 1, "not stored, so not passed on either");

    // The same when the firing and the back-dated record arrive in one message.
    let mut fresh = RevocationSet::new(org.root());
    let both = set_of(&org, &[&fired, &backdated]);
    assert_eq!(fresh.merge_received(&both, at(30)).unwrap(), 1);
    assert!(fresh.is_key_revoked(&mallory.id()));
    assert!(!fresh.is_key_revoked(&ceo));
}

#[test]
fn an_expired_admin_signs_nothing_a_peer_takes() {
    let org = Org::new();
    let temp = org.admin("temp", 30);
    let victim = key();
    let record = temp.revokes(RevocationTarget::Key(victim), at(1));
    let from_peer = set_of(&org, &[&record]);

    let mut while_valid = RevocationSet::new(org.root());
    assert_eq!(while_valid.merge_received(&from_peer, at(2)).unwrap(), 1);
    assert!(while_valid.is_key_revoked(&victim));

    let mut after = RevocationSet::new(org.root());
    assert_eq!(after.merge_received(&from_peer, at(31)).unwrap(), 0);
    assert!(!after.is_key_revoked(&victim));
}

#[test]
fn a_record_dated_in_the_future_is_not_taken() {
    let org = Org::new();
    let admin = org.admin("dana", 365);
    let target = key();
    let future = admin.revokes(RevocationTarget::Key(target), at(100));
    let mut device = RevocationSet::new(org.root());
    assert_eq!(
        device
            .merge_received(&set_of(&org, &[&future]), at(1))
            .unwrap(),
        0
    );
    assert_eq!(
        device
            .merge_received(&set_of(&org, &[&future]), at(100))
            .unwrap(),
        1
    );
}

#[test]
fn the_root_cancels_a_wrongful_revocation_and_nobody_else_can() {
    let org = Org::new();
    let admin = org.admin("dana", 365);
    let alice = Name::new("alice").unwrap();
    let wrongful = admin.revokes(RevocationTarget::User(alice.clone()), at(1));
    let mut set = set_of(&org, &[&wrongful]);
    assert!(set.is_user_revoked(&alice));

    let by_admin = admin.revokes(RevocationTarget::Record(wrongful.id()), at(2));
    assert_eq!(
        set.insert(by_admin).unwrap_err(),
        RevocationError::CancelNotByRoot
    );

    let cancel = org.by_root(RevocationTarget::Record(wrongful.id()), at(2));
    assert!(set.insert(cancel.clone()).unwrap());
    assert!(!set.is_user_revoked(&alice), "the name can be used again");
    assert_eq!(set.ignored(), 1);

    // The cancellation travels: a device that had the wrongful record learns it from a peer.
    let mut device = set_of(&org, &[&wrongful]);
    assert_eq!(device.merge_received(&set, at(3)).unwrap(), 1);
    assert!(!device.is_user_revoked(&alice));
    // And it survives the device's own store.
    let reopened = RevocationSet::decode(&org.root(), &device.encode()).unwrap();
    assert!(!reopened.is_user_revoked(&alice));
    assert_eq!(reopened.digest(), device.digest());
}

#[test]
fn a_cancelled_firing_gives_the_admin_back_its_later_records() {
    let org = Org::new();
    let admin = org.admin("dana", 365);
    let lost = key();
    let firing = org.by_root(RevocationTarget::Key(admin.id()), at(1));
    let later = admin.revokes(RevocationTarget::Key(lost), at(2));
    let mut set = set_of(&org, &[&firing, &later]);
    assert!(!set.is_key_revoked(&lost));
    set.insert(org.by_root(RevocationTarget::Record(firing.id()), at(3)))
        .unwrap();
    assert!(!set.is_key_revoked(&admin.id()));
    assert!(set.is_key_revoked(&lost));
}
