//! Property tests: encodings round-trip and reject garbage; the revocation set's merge is a
//! join-semilattice (commutative, associative, idempotent).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use jarvis_identity::{
    AuditEntry, AuditLog, Bundle, CertChain, CertKind, CertTemplate, Certificate, Invite,
    JoinRequest, Name, OrgInfo, Revocation, RevocationSet, RevocationTarget, Roles, SecretKey,
    UnixTime,
};
use proptest::prelude::*;
use std::sync::OnceLock;

/// Key generation is the slow part of every case; a small fixed pool keeps thousands of cases
/// fast while still mixing signers and subjects.
fn keys() -> &'static [SecretKey] {
    static KEYS: OnceLock<Vec<SecretKey>> = OnceLock::new();
    KEYS.get_or_init(|| (0..8).map(|_| SecretKey::generate()).collect())
}

fn name() -> impl Strategy<Value = Name> {
    "[a-zA-Z0-9][a-zA-Z0-9 ._'-]{0,40}[a-zA-Z0-9]".prop_map(|s| Name::new(&s).unwrap())
}

fn kind() -> impl Strategy<Value = CertKind> {
    prop_oneof![
        Just(CertKind::Admin),
        Just(CertKind::User),
        Just(CertKind::Invite),
        Just(CertKind::Relay),
        Just(CertKind::Gpu),
        Just(CertKind::Device),
    ]
}

fn cert() -> impl Strategy<Value = Certificate> {
    (
        kind(),
        0usize..8,
        0usize..8,
        name(),
        any::<u32>(),
        0u64..1_000_000,
    )
        .prop_map(|(kind, issuer, subject, name, start, len)| {
            let roles = match kind {
                CertKind::Admin => Roles::ADMIN,
                CertKind::User | CertKind::Invite => Roles::MEMBER,
                CertKind::Relay => Roles::RELAY,
                CertKind::Gpu => Roles::GPU,
                CertKind::Device => Roles::NONE,
            };
            let age_recipient = (kind == CertKind::Device)
                .then(|| age::x25519::Identity::generate().to_public().to_string());
            Certificate::issue(
                CertTemplate {
                    kind,
                    subject: keys()[subject].public(),
                    name,
                    roles,
                    not_before: UnixTime(u64::from(start)),
                    not_after: UnixTime(u64::from(start) + len),
                    age_recipient,
                },
                &keys()[issuer],
            )
            .unwrap()
        })
}

/// A revocation signed by the root (key 0) of a fixed org.
fn revocation() -> impl Strategy<Value = Revocation> {
    (
        any::<bool>(),
        1usize..8,
        name(),
        "[ -~]{0,40}",
        any::<u32>(),
    )
        .prop_map(|(by_key, key, user, reason, at)| {
            let target = if by_key {
                RevocationTarget::Key(keys()[key].public())
            } else {
                RevocationTarget::User(user)
            };
            Revocation::issue(target, &reason, UnixTime(u64::from(at)), None, &keys()[0]).unwrap()
        })
}

fn set_of(records: &[Revocation]) -> RevocationSet {
    let mut set = RevocationSet::new(keys()[0].public());
    for r in records {
        set.insert(r.clone()).unwrap();
    }
    set
}

fn merged(a: &RevocationSet, b: &RevocationSet) -> RevocationSet {
    let mut out = a.clone();
    out.merge(b).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn certificates_round_trip(cert in cert()) {
        let bytes = cert.encode();
        prop_assert_eq!(Certificate::decode(&bytes).unwrap(), cert.clone());
        // No prefix of a valid encoding decodes, and neither does anything with a byte appended.
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            prop_assert!(Certificate::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(Certificate::decode(&longer).is_err());
    }

    #[test]
    fn chains_round_trip(certs in proptest::collection::vec(cert(), 1..8)) {
        let chain = CertChain::new(certs).unwrap();
        prop_assert_eq!(CertChain::decode(&chain.encode()).unwrap(), chain);
    }

    #[test]
    fn revocations_round_trip(record in revocation()) {
        prop_assert_eq!(Revocation::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn revocation_sets_round_trip(records in proptest::collection::vec(revocation(), 0..12)) {
        let set = set_of(&records);
        let decoded = RevocationSet::decode(&keys()[0].public(), &set.encode()).unwrap();
        prop_assert_eq!(decoded.digest(), set.digest());
        prop_assert_eq!(decoded, set);
    }

    #[test]
    fn revocation_merge_is_commutative_associative_idempotent(
        a in proptest::collection::vec(revocation(), 0..8),
        b in proptest::collection::vec(revocation(), 0..8),
        c in proptest::collection::vec(revocation(), 0..8),
    ) {
        let (a, b, c) = (set_of(&a), set_of(&b), set_of(&c));
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &a), a.clone());
        // Digests agree exactly when the sets do.
        prop_assert_eq!(merged(&a, &b).digest(), merged(&b, &a).digest());
    }

    #[test]
    fn revocation_insertion_order_does_not_matter(
        mut records in proptest::collection::vec(revocation(), 0..12),
        seed in any::<u64>(),
    ) {
        let forward = set_of(&records);
        // A deterministic shuffle driven by the seed.
        let n = records.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            records.swap(i, j);
        }
        prop_assert_eq!(set_of(&records), forward);
    }

    #[test]
    fn invites_requests_and_bundles_round_trip(user in name(), hours in 1u64..1000) {
        let root = &keys()[0];
        let org = OrgInfo { name: Name::new("acme").unwrap(), root: root.public(), relays: vec!["/dns/relay.example/udp/4001/quic-v1".into()] };
        let now = UnixTime(1_800_000_000);
        let invite = Invite::create(org.clone(), None, root, user, Roles::MEMBER, now, now.saturating_add_secs(hours * 3600)).unwrap();
        let token = invite.to_token();
        let back = Invite::from_token(&token).unwrap();
        prop_assert_eq!(back.to_token(), token);

        let request = JoinRequest::create(jarvis_identity::RequestKind::Relay, &keys()[3], Name::new("r").unwrap(), None, now);
        prop_assert_eq!(JoinRequest::from_token(&request.to_token()).unwrap(), request.clone());
        let bundle = request.enroll(&org, root, None, None, now, 3600).unwrap();
        prop_assert_eq!(Bundle::from_token(&bundle.to_token()).unwrap(), bundle);
        prop_assert_eq!(OrgInfo::decode(&org.encode()).unwrap(), org);
    }

    /// Every decoder of untrusted bytes returns, on any input, without panicking. (The fuzz
    /// targets in identity/fuzz search this space with coverage guidance; this keeps a cheap
    /// version in every test run.)
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Certificate::decode(&bytes);
        let _ = CertChain::decode(&bytes);
        let _ = Revocation::decode(&bytes);
        let _ = RevocationSet::decode(&keys()[0].public(), &bytes);
        let _ = OrgInfo::decode(&bytes);
        let _ = AuditEntry::decode(&bytes);
        let _ = AuditLog::verify(keys()[0].public(), &bytes, None);
        let _ = jarvis_identity::sealed::unseal(&bytes, "x");
        let text = String::from_utf8_lossy(&bytes);
        let _ = Invite::from_token(&text);
        let _ = JoinRequest::from_token(&text);
        let _ = Bundle::from_token(&text);
        let _ = text.parse::<jarvis_identity::PublicKey>();
    }

    /// Mutating any single byte of a valid certificate either fails to decode or fails to verify.
    #[test]
    fn single_byte_mutations_never_verify(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let root = &keys()[0];
        let admin = Certificate::issue(CertTemplate {
            kind: CertKind::Admin, subject: keys()[1].public(), name: Name::new("admin").unwrap(),
            roles: Roles::ADMIN, not_before: UnixTime(0), not_after: UnixTime(u64::MAX),
            age_recipient: None,
        }, root).unwrap();
        let chain = CertChain::new(vec![admin]).unwrap();
        let mut bytes = chain.encode();
        let i = index.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(decoded) = CertChain::decode(&bytes) {
            prop_assert!(decoded.verify(&root.public(), UnixTime(5), &RevocationSet::new(root.public())).is_err());
        }
    }
}
