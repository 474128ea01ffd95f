//! #20 finding 3: an old invite mints no user that outlives it, and once an admin has recorded
//! who claimed an invite, every device refuses any other user made with it. Both tests failed on
//! the code before the fix (the forged user verified; nothing recorded a claim).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use jarvis_identity::cert::MEMBER_CERT_SECS;
use jarvis_identity::{
    CertChain, CertKind, CertTemplate, Certificate, ChainError, Name, Revocation, RevocationSet,
    RevocationTarget, Roles, SecretKey, UnixTime,
};

const NOW: UnixTime = UnixTime(1_800_000_000);
const HOUR: u64 = 3600;
const YEAR: u64 = 365 * 24 * HOUR;

struct Fixture {
    root: SecretKey,
    admin: SecretKey,
    admin_chain: CertChain,
    /// What an invite token holds: the invite's secret key and its chain.
    invite: SecretKey,
    invite_chain: CertChain,
}

fn cert(
    kind: CertKind,
    subject: &SecretKey,
    name: &str,
    roles: Roles,
    from: UnixTime,
    until: UnixTime,
    issuer: &SecretKey,
) -> Certificate {
    Certificate::issue(
        CertTemplate {
            kind,
            subject: subject.public(),
            name: Name::new(name).unwrap(),
            roles,
            not_before: from,
            not_after: until,
            age_recipient: (kind == CertKind::Device).then(|| {
                jarvis_identity::age::x25519::Identity::generate()
                    .to_public()
                    .to_string()
            }),
        },
        issuer,
    )
    .unwrap()
}

/// An org whose admin made an invite for alice valid for one hour from `NOW`.
fn fixture() -> Fixture {
    let root = SecretKey::generate();
    let admin = SecretKey::generate();
    let admin_cert = cert(
        CertKind::Admin,
        &admin,
        "admin",
        Roles::ADMIN,
        NOW,
        NOW.saturating_add_secs(10 * YEAR),
        &root,
    );
    let admin_chain = CertChain::new(vec![admin_cert]).unwrap();
    let invite = SecretKey::generate();
    let invite_cert = cert(
        CertKind::Invite,
        &invite,
        "alice",
        Roles::MEMBER,
        NOW,
        NOW.saturating_add_secs(HOUR),
        &admin,
    );
    let invite_chain = admin_chain.extend(invite_cert).unwrap();
    Fixture {
        root,
        admin,
        admin_chain,
        invite,
        invite_chain,
    }
}

impl Fixture {
    /// A user and device made with the invite token, as anyone holding it can.
    fn redeem(&self, user_from: UnixTime, user_until: UnixTime) -> (SecretKey, CertChain) {
        let user = SecretKey::generate();
        let user_cert = cert(
            CertKind::User,
            &user,
            "alice",
            Roles::MEMBER,
            user_from,
            user_until,
            &self.invite,
        );
        let device = SecretKey::generate();
        let device_cert = cert(
            CertKind::Device,
            &device,
            "laptop",
            Roles::NONE,
            user_from,
            user_until,
            &user,
        );
        let chain = self
            .invite_chain
            .extend(user_cert)
            .unwrap()
            .extend(device_cert)
            .unwrap();
        (user, chain)
    }

    fn none(&self) -> RevocationSet {
        RevocationSet::new(self.root.public())
    }
}

#[test]
fn an_old_invite_mints_no_user_that_outlives_it() {
    let org = fixture();
    // Years after the invite ran out, its leaked token makes a user dated inside its window and
    // valid for ten years.
    let (_, forged) = org.redeem(
        NOW.saturating_add_secs(HOUR / 2),
        NOW.saturating_add_secs(10 * YEAR),
    );
    let later = NOW.saturating_add_secs(3 * YEAR);
    let err = forged
        .verify(&org.root.public(), later, &org.none())
        .unwrap_err();
    assert!(
        matches!(err, ChainError::InviteLifetimeExceeded { .. }),
        "{err}"
    );

    // What `jarvis join` makes (a member's lifetime from the moment of joining) still verifies
    // for that lifetime, and not after.
    let joined_at = NOW.saturating_add_secs(HOUR / 2);
    let (_, honest) = org.redeem(joined_at, joined_at.saturating_add_secs(MEMBER_CERT_SECS));
    assert!(
        honest
            .verify(
                &org.root.public(),
                joined_at.saturating_add_secs(YEAR),
                &org.none()
            )
            .is_ok()
    );
    assert!(
        honest
            .verify(&org.root.public(), later, &org.none())
            .is_err()
    );
}

#[test]
fn once_a_claim_is_recorded_every_other_user_of_the_invite_is_refused() {
    let org = fixture();
    let at = NOW.saturating_add_secs(60);
    let until = at.saturating_add_secs(MEMBER_CERT_SECS);
    let (alice, alices_laptop) = org.redeem(at, until);
    let (_, mallorys_pc) = org.redeem(at, until);
    let check = |chain: &CertChain, set: &RevocationSet| {
        chain.verify(&org.root.public(), NOW.saturating_add_secs(HOUR), set)
    };
    // Joining is offline: without a record both verify (what a relay that saw both refuses).
    assert!(check(&mallorys_pc, &org.none()).is_ok());

    let claim = Revocation::issue(
        RevocationTarget::Claim {
            invite: org.invite_chain.leaf().unwrap().serial(),
            user_key: alice.public(),
        },
        "",
        at,
        Some(&org.admin_chain),
        &org.admin,
    )
    .unwrap();
    let mut set = org.none();
    set.insert(claim.clone()).unwrap();
    assert!(check(&alices_laptop, &set).is_ok());
    let err = check(&mallorys_pc, &set).unwrap_err();
    assert!(matches!(err, ChainError::Revoked { .. }), "{err}");
    assert!(
        err.to_string().contains("claimed by another user key"),
        "{err}"
    );

    // The record travels in sets like any revocation.
    let mut device = org.none();
    assert_eq!(
        device
            .merge_received(&set, NOW.saturating_add_secs(HOUR))
            .unwrap(),
        1
    );
    assert!(check(&mallorys_pc, &device).is_err());
    let reopened = RevocationSet::decode(&org.root.public(), &device.encode()).unwrap();
    assert!(check(&mallorys_pc, &reopened).is_err());
    assert!(reopened.in_force(&claim));
}
