//! Certificate chains, invites, pairing and enrolment, end to end at the library boundary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use jarvis_identity::{
    Bundle, CertChain, CertKind, CertTemplate, Certificate, ChainError, DeviceKeys, EnrolError,
    Invite, JoinRequest, Name, OrgInfo, RequestKind, Revocation, RevocationSet, RevocationTarget,
    Roles, SecretKey, TokenError, UnixTime,
};

const NOW: UnixTime = UnixTime(1_800_000_000);
const HOUR: u64 = 3600;

struct Org {
    root: SecretKey,
    admin: SecretKey,
    admin_chain: CertChain,
    info: OrgInfo,
}

fn org(name: &str) -> Org {
    let root = SecretKey::generate();
    let admin = SecretKey::generate();
    let cert = Certificate::issue(
        CertTemplate {
            kind: CertKind::Admin,
            subject: admin.public(),
            name: Name::new("admin").unwrap(),
            roles: Roles::ADMIN,
            not_before: NOW,
            not_after: NOW.saturating_add_secs(10 * 365 * 24 * HOUR),
            age_recipient: None,
        },
        &root,
    )
    .unwrap();
    Org {
        info: OrgInfo {
            name: Name::new(name).unwrap(),
            root: root.public(),
            relays: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
        },
        root,
        admin,
        admin_chain: CertChain::new(vec![cert]).unwrap(),
    }
}

struct Device {
    key: SecretKey,
    age: age::x25519::Identity,
    name: Name,
}

fn device(name: &str) -> Device {
    Device {
        key: SecretKey::generate(),
        age: age::x25519::Identity::generate(),
        name: Name::new(name).unwrap(),
    }
}

impl Device {
    fn keys(&self) -> (String, Name) {
        (self.age.to_public().to_string(), self.name.clone())
    }
}

fn invite(org: &Org, user: &str, expires_in: u64) -> Invite {
    Invite::create(
        org.info.clone(),
        Some(&org.admin_chain),
        &org.admin,
        Name::new(user).unwrap(),
        Roles::MEMBER,
        NOW,
        NOW.saturating_add_secs(expires_in),
    )
    .unwrap()
}

fn redeem(
    invite_token: &str,
    dev: &Device,
    at: UnixTime,
) -> Result<jarvis_identity::Redeemed, EnrolError> {
    let (recipient, name) = dev.keys();
    Invite::from_token(invite_token)?.redeem(
        at,
        None,
        &DeviceKeys {
            key: dev.key.public(),
            name: &name,
            age_recipient: &recipient,
        },
    )
}

fn empty(org: &Org) -> RevocationSet {
    RevocationSet::new(org.root.public())
}

#[test]
fn invite_then_pairing_gives_two_devices_of_one_user() {
    let acme = org("acme");
    let token = invite(&acme, "alice", 24 * HOUR).to_token();
    let laptop = device("laptop");
    let first = redeem(&token, &laptop, NOW.saturating_add_secs(60)).unwrap();

    let v1 = first
        .device_chain
        .verify(
            &acme.root.public(),
            NOW.saturating_add_secs(60),
            &empty(&acme),
        )
        .unwrap();
    assert_eq!(v1.kind, CertKind::Device);
    assert_eq!(v1.user.as_ref().unwrap().as_str(), "alice");
    assert_eq!(v1.subject, laptop.key.public());
    assert!(v1.roles.contains(Roles::MEMBER));

    // Offline pairing: the phone makes a request, the laptop approves it, the phone checks it.
    let phone = device("phone");
    let request = JoinRequest::create(
        RequestKind::Device,
        &phone.key,
        phone.name.clone(),
        Some(phone.age.to_public().to_string()),
        NOW.saturating_add_secs(120),
    );
    let request = JoinRequest::from_token(&request.to_token()).unwrap();
    let bundle = request
        .approve_device(
            &first.org,
            &first.user_key,
            &first.user_chain,
            NOW.saturating_add_secs(120),
        )
        .unwrap();
    let bundle = Bundle::from_token(&bundle.to_token()).unwrap();
    let v2 = bundle
        .check_for(
            &request,
            Some(&acme.root.public()),
            NOW.saturating_add_secs(130),
        )
        .unwrap();
    assert_eq!(v2.user, v1.user);
    assert_ne!(v2.subject, v1.subject);
    assert_eq!(
        bundle.chain.leaf().unwrap().age_recipient(),
        Some(phone.age.to_public().to_string().as_str())
    );
}

#[test]
fn expired_invites_are_refused() {
    let acme = org("acme");
    let token = invite(&acme, "bob", HOUR).to_token();
    let err = redeem(&token, &device("laptop"), NOW.saturating_add_secs(2 * HOUR)).unwrap_err();
    assert!(
        matches!(err, EnrolError::Chain(ChainError::Expired { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn tampered_invites_and_certificates_are_refused() {
    let acme = org("acme");
    let inv = invite(&acme, "carol", HOUR);
    let token = inv.to_token();

    // Any change to the text is caught by the checksum...
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    let damaged: String = chars.into_iter().collect();
    assert!(matches!(
        Invite::from_token(&damaged),
        Err(EnrolError::Token(TokenError::Damaged(_)))
    ));

    // ...and a change made by someone who recomputes the checksum is caught by the signature:
    // rename the invited user inside the invite certificate.
    let bytes =
        jarvis_identity::token::dearmor(jarvis_identity::TokenKind::Invite, &token).unwrap();
    let needle = b"carol";
    let at = bytes
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap();
    let mut forged = bytes.clone();
    forged[at..at + 5].copy_from_slice(b"mallo");
    let forged = jarvis_identity::token::armor(jarvis_identity::TokenKind::Invite, &forged);
    let err = redeem(&forged, &device("x"), NOW).unwrap_err();
    assert!(
        matches!(err, EnrolError::Chain(ChainError::BadSignature { .. })),
        "{err}"
    );

    // A device certificate whose name was changed no longer verifies.
    let laptop = device("laptop");
    let first = redeem(&token, &laptop, NOW).unwrap();
    let encoded = first.device_chain.encode();
    let at = encoded.windows(6).rposition(|w| w == b"laptop").unwrap();
    let mut bad = encoded.clone();
    bad[at] = b'L';
    let chain = CertChain::decode(&bad).unwrap();
    assert!(matches!(
        chain.verify(&acme.root.public(), NOW, &empty(&acme)),
        Err(ChainError::BadSignature { .. })
    ));
}

#[test]
fn chains_from_another_org_are_refused() {
    let acme = org("acme");
    let globex = org("globex");
    let token = invite(&globex, "dave", HOUR).to_token();
    let redeemed = redeem(&token, &device("laptop"), NOW).unwrap();
    let err = redeemed
        .device_chain
        .verify(&acme.root.public(), NOW, &empty(&acme))
        .unwrap_err();
    assert!(matches!(err, ChainError::OtherOrg { .. }), "{err}");
    assert!(err.to_string().contains("another org"));

    // Pinning the org when redeeming refuses a foreign invite before anything is made.
    let (recipient, name) = device("laptop").keys();
    let err = Invite::from_token(&token)
        .unwrap()
        .redeem(
            NOW,
            Some(&acme.root.public()),
            &DeviceKeys {
                key: SecretKey::generate().public(),
                name: &name,
                age_recipient: &recipient,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, EnrolError::Chain(ChainError::OtherOrg { .. })),
        "{err}"
    );
}

#[test]
fn invite_keys_cannot_mint_other_users_or_more_roles() {
    let acme = org("acme");
    let inv = invite(&acme, "erin", HOUR);
    let token = inv.to_token();
    let bytes =
        jarvis_identity::token::dearmor(jarvis_identity::TokenKind::Invite, &token).unwrap();
    let seed: [u8; 32] = bytes[bytes.len() - 32..].try_into().unwrap();
    let invite_key = SecretKey::from_seed(&seed);
    let invite_chain = CertChain::new(vec![
        acme.admin_chain.certs()[0].clone(),
        inv.certificate().unwrap().clone(),
    ])
    .unwrap();
    let user = SecretKey::generate();
    let mint = |name: &str, roles: Roles, at: UnixTime| {
        let cert = Certificate::issue(
            CertTemplate {
                kind: CertKind::User,
                subject: user.public(),
                name: Name::new(name).unwrap(),
                roles,
                not_before: at,
                not_after: at.saturating_add_secs(HOUR),
                age_recipient: None,
            },
            &invite_key,
        )
        .unwrap();
        invite_chain
            .extend(cert)
            .unwrap()
            .verify(&acme.root.public(), at, &empty(&acme))
    };
    assert!(mint("erin", Roles::MEMBER, NOW).is_ok());
    assert!(matches!(
        mint("frank", Roles::MEMBER, NOW),
        Err(ChainError::InviteNameMismatch { .. })
    ));
    assert!(matches!(
        mint("erin", Roles::MEMBER.union(Roles::ADMIN), NOW),
        Err(ChainError::InviteRolesExceeded { .. })
    ));
    assert!(matches!(
        mint("erin", Roles::MEMBER, NOW.saturating_add_secs(2 * HOUR)),
        Err(ChainError::InviteNotValidThen { .. })
    ));
}

#[test]
fn devices_and_members_cannot_issue_what_only_admins_may() {
    let acme = org("acme");
    let first = redeem(
        &invite(&acme, "gina", HOUR).to_token(),
        &device("laptop"),
        NOW,
    )
    .unwrap();
    // A member's user key tries to issue a relay certificate.
    let relay = SecretKey::generate();
    let cert = Certificate::issue(
        CertTemplate {
            kind: CertKind::Relay,
            subject: relay.public(),
            name: Name::new("evil-relay").unwrap(),
            roles: Roles::RELAY,
            not_before: NOW,
            not_after: NOW.saturating_add_secs(HOUR),
            age_recipient: None,
        },
        &first.user_key,
    )
    .unwrap();
    let err = first
        .user_chain
        .extend(cert)
        .unwrap()
        .verify(&acme.root.public(), NOW, &empty(&acme))
        .unwrap_err();
    assert!(matches!(err, ChainError::BadNesting { .. }), "{err}");
}

#[test]
fn revocation_of_a_device_or_its_user_refuses_the_chain() {
    let acme = org("acme");
    let first = redeem(
        &invite(&acme, "hank", HOUR).to_token(),
        &device("laptop"),
        NOW,
    )
    .unwrap();
    let device_key = first.device_chain.leaf().unwrap().subject();
    let mut set = empty(&acme);
    assert!(
        first
            .device_chain
            .verify(&acme.root.public(), NOW, &set)
            .is_ok()
    );

    let by_key = Revocation::issue(
        RevocationTarget::Key(device_key),
        "lost",
        NOW,
        Some(&acme.admin_chain),
        &acme.admin,
    )
    .unwrap();
    assert!(set.insert(by_key.clone()).unwrap());
    assert!(
        !set.insert(by_key).unwrap(),
        "inserting twice changes nothing"
    );
    let err = first
        .device_chain
        .verify(&acme.root.public(), NOW, &set)
        .unwrap_err();
    assert!(matches!(err, ChainError::Revoked { .. }));
    assert!(err.to_string().contains("lost"), "{err}");

    let mut set = empty(&acme);
    set.insert(
        Revocation::issue(
            RevocationTarget::User(Name::new("hank").unwrap()),
            "left the company",
            NOW,
            None,
            &acme.root,
        )
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        first.device_chain.verify(&acme.root.public(), NOW, &set),
        Err(ChainError::Revoked { .. })
    ));
    // The same set round-trips through its encoding.
    let decoded = RevocationSet::decode(&acme.root.public(), &set.encode()).unwrap();
    assert_eq!(decoded.digest(), set.digest());
}

#[test]
fn revocations_signed_by_non_admins_or_other_orgs_are_refused() {
    let acme = org("acme");
    let globex = org("globex");
    let first = redeem(
        &invite(&acme, "ivy", HOUR).to_token(),
        &device("laptop"),
        NOW,
    )
    .unwrap();
    let mut set = empty(&acme);
    let by_member = Revocation::issue(
        RevocationTarget::User(Name::new("boss").unwrap()),
        "",
        NOW,
        Some(&first.user_chain),
        &first.user_key,
    )
    .unwrap();
    assert!(set.insert(by_member).is_err());
    let foreign = Revocation::issue(
        RevocationTarget::User(Name::new("boss").unwrap()),
        "",
        NOW,
        Some(&globex.admin_chain),
        &globex.admin,
    )
    .unwrap();
    assert!(set.insert(foreign).is_err());
    assert!(set.is_empty());
}

#[test]
fn infrastructure_enrolment() {
    let acme = org("acme");
    let gpu = SecretKey::generate();
    let request = JoinRequest::create(
        RequestKind::Gpu,
        &gpu,
        Name::new("gpu-1").unwrap(),
        None,
        NOW,
    );
    let request = JoinRequest::from_token(&request.to_token()).unwrap();
    let bundle = request
        .enroll(
            &acme.info,
            &acme.admin,
            Some(&acme.admin_chain),
            None,
            NOW,
            365 * 24 * HOUR,
        )
        .unwrap();
    let verified = bundle
        .check_for(&request, Some(&acme.root.public()), NOW)
        .unwrap();
    assert_eq!(verified.kind, CertKind::Gpu);
    assert!(verified.roles.contains(Roles::GPU));

    // A bundle for someone else's request is refused.
    let other = JoinRequest::create(
        RequestKind::Gpu,
        &SecretKey::generate(),
        Name::new("gpu-2").unwrap(),
        None,
        NOW,
    );
    assert!(matches!(
        bundle.check_for(&other, None, NOW),
        Err(EnrolError::BundleForAnotherKey { .. })
    ));
    // A device request cannot be enrolled as infrastructure.
    let dev = device("d");
    let dev_request = JoinRequest::create(
        RequestKind::Device,
        &dev.key,
        dev.name.clone(),
        Some(dev.age.to_public().to_string()),
        NOW,
    );
    assert!(
        dev_request
            .enroll(
                &acme.info,
                &acme.admin,
                Some(&acme.admin_chain),
                None,
                NOW,
                HOUR
            )
            .is_err()
    );
}

#[test]
fn tampered_requests_are_refused() {
    let key = SecretKey::generate();
    let request = JoinRequest::create(
        RequestKind::Relay,
        &key,
        Name::new("relay-a").unwrap(),
        None,
        NOW,
    );
    let bytes =
        jarvis_identity::token::dearmor(jarvis_identity::TokenKind::Request, &request.to_token())
            .unwrap();
    let at = bytes.windows(7).position(|w| w == b"relay-a").unwrap();
    let mut forged = bytes;
    forged[at + 6] = b'b';
    let forged = jarvis_identity::token::armor(jarvis_identity::TokenKind::Request, &forged);
    assert!(matches!(
        JoinRequest::from_token(&forged),
        Err(EnrolError::BadRequestSignature)
    ));
}

#[test]
fn wrong_token_kinds_say_what_they_expected() {
    let acme = org("acme");
    let token = invite(&acme, "jo", HOUR).to_token();
    let err = Bundle::from_token(&token).unwrap_err();
    assert!(err.to_string().contains("jvbundle_"), "{err}");
}

#[test]
fn a_device_bundle_names_the_approving_device_and_the_new_device_checks_it_by_user_key() {
    let acme = org("acme");
    let at = NOW.saturating_add_secs(60);
    let laptop = device("laptop");
    let first = redeem(&invite(&acme, "alice", 24 * HOUR).to_token(), &laptop, at).unwrap();
    let phone = device("phone");
    let request = JoinRequest::create(
        RequestKind::Device,
        &phone.key,
        phone.name.clone(),
        Some(phone.age.to_public().to_string()),
        at,
    );
    let plain = request
        .approve_device(&first.org, &first.user_key, &first.user_chain, at)
        .unwrap();
    // Without a sponsor the bundle keeps its first encoding (older devices read it).
    assert_eq!(plain.encode()[0], 1);
    assert_eq!(plain.check_sponsor(at, &empty(&acme)).unwrap(), None);

    let bundle = Bundle::from_token(
        &plain
            .clone()
            .with_sponsor(first.device_chain.clone())
            .to_token(),
    )
    .unwrap();
    assert_eq!(bundle.sponsor.as_ref(), Some(&first.device_chain));
    bundle
        .check_for(&request, Some(&acme.root.public()), at)
        .unwrap();
    let sponsor = bundle.check_sponsor(at, &empty(&acme)).unwrap().unwrap();
    assert_eq!(sponsor.key, laptop.key.public());
    assert_eq!(sponsor.name.as_str(), "laptop");
    assert_eq!(sponsor.age_recipient, laptop.age.to_public().to_string());

    // Another user's device is refused, even one whose user has the same *name* (a second
    // invite for "alice"): the same user is the same user key.
    for user in ["bob", "alice"] {
        let other = redeem(
            &invite(&acme, user, 24 * HOUR).to_token(),
            &device("laptop"),
            at,
        )
        .unwrap();
        let forged = plain.clone().with_sponsor(other.device_chain);
        assert!(
            matches!(
                forged.check_sponsor(at, &empty(&acme)),
                Err(EnrolError::SponsorOtherUser)
            ),
            "{user}"
        );
    }
    // The user's own chain is not a device.
    let not_device = plain.clone().with_sponsor(first.user_chain.clone());
    assert!(matches!(
        not_device.check_sponsor(at, &empty(&acme)),
        Err(EnrolError::SponsorNotADevice("user"))
    ));
    // The new device named as its own sponsor.
    let itself = plain.clone().with_sponsor(plain.chain.clone());
    assert!(matches!(
        itself.check_sponsor(at, &empty(&acme)),
        Err(EnrolError::SponsorIsSelf)
    ));
    // A device of another org.
    let other_org = org("globex");
    let stranger = redeem(
        &invite(&other_org, "alice", 24 * HOUR).to_token(),
        &device("laptop"),
        at,
    )
    .unwrap();
    let foreign = plain.clone().with_sponsor(stranger.device_chain);
    assert!(matches!(
        foreign.check_sponsor(at, &empty(&acme)),
        Err(EnrolError::Chain(_))
    ));
    // A revoked sponsor.
    let mut set = empty(&acme);
    set.insert(
        Revocation::issue(
            RevocationTarget::Key(laptop.key.public()),
            "stolen",
            at,
            Some(&acme.admin_chain),
            &acme.admin,
        )
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        bundle.check_sponsor(at, &set),
        Err(EnrolError::Chain(ChainError::Revoked { .. }))
    ));
    // A damaged sponsor (an empty chain, a bad version) is refused by the decoder.
    let mut bytes = bundle.encode();
    let tail = first.device_chain.encode().len();
    let cut = bytes.len() - tail;
    bytes.truncate(cut);
    bytes.extend_from_slice(&[1, 0]);
    assert!(Bundle::decode(&bytes).is_err());
    let mut bytes = bundle.encode();
    bytes[0] = 3;
    assert!(Bundle::decode(&bytes).is_err());
}
