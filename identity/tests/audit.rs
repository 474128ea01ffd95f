//! The audit log verifies end to end and fails on any single flipped byte.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use jarvis_identity::{
    AuditAction, AuditError, AuditLog, CertKind, CertTemplate, Certificate, Name, RevocationTarget,
    Roles, SecretKey, Serial, UnixTime,
};

fn sample_log() -> (SecretKey, AuditLog, Vec<u8>) {
    let root = SecretKey::generate();
    let admin = SecretKey::generate();
    let admin_cert = Certificate::issue(
        CertTemplate {
            kind: CertKind::Admin,
            subject: admin.public(),
            name: Name::new("admin").unwrap(),
            roles: Roles::ADMIN,
            not_before: UnixTime(0),
            not_after: UnixTime(u64::MAX),
            age_recipient: None,
        },
        &root,
    )
    .unwrap();
    let mut log = AuditLog::new(root.public());
    let mut file = Vec::new();
    file.extend(
        log.append(
            &root,
            UnixTime(10),
            AuditAction::OrgCreated {
                org: Name::new("acme").unwrap(),
                admin: admin_cert,
            },
        )
        .unwrap()
        .frame(),
    );
    let actions = [
        AuditAction::Invited {
            user: Name::new("alice").unwrap(),
            roles: Roles::MEMBER,
            invite: Serial([7; 16]),
            expires_at: UnixTime(1000),
        },
        AuditAction::RelayAdded {
            address: "/ip4/127.0.0.1/udp/4001/quic-v1".into(),
        },
        AuditAction::InviteClaimed {
            invite: Serial([7; 16]),
            user: Name::new("alice").unwrap(),
            user_key: SecretKey::generate().public(),
            device: SecretKey::generate().public(),
            device_name: Name::new("laptop").unwrap(),
            accepted: false,
            relay: "/ip4/127.0.0.1/udp/4001/quic-v1".into(),
        },
        AuditAction::Revoked {
            target: RevocationTarget::User(Name::new("alice").unwrap()),
            reason: "left".into(),
        },
    ];
    for (i, action) in actions.into_iter().enumerate() {
        file.extend(
            log.append(&admin, UnixTime(20 + i as u64), action)
                .unwrap()
                .frame(),
        );
    }
    (root, log, file)
}

#[test]
fn a_log_verifies_and_every_flipped_byte_breaks_it() {
    let (root, log, file) = sample_log();
    let head = log.head();
    let verified = AuditLog::verify(root.public(), &file, head).unwrap();
    assert_eq!(verified.entries().len(), 5);
    assert_eq!(
        verified.entries()[3].action().kind(),
        "invite-claim-refused"
    );
    assert!(
        verified.entries()[3]
            .action()
            .to_string()
            .contains("claimed a second time"),
        "{}",
        verified.entries()[3].action()
    );
    assert_eq!(
        verified.entries()[4].action().to_string(),
        "revoked user `alice`: left"
    );

    for i in 0..file.len() {
        let mut bad = file.clone();
        bad[i] ^= 0x01;
        assert!(
            AuditLog::verify(root.public(), &bad, head).is_err(),
            "flipping byte {i} went unnoticed"
        );
    }
}

#[test]
fn removing_the_last_entry_is_noticed_with_the_head() {
    let (root, log, file) = sample_log();
    let last = log.entries().last().unwrap().frame().len();
    let truncated = &file[..file.len() - last];
    assert!(AuditLog::verify(root.public(), truncated, None).is_ok());
    assert!(matches!(
        AuditLog::verify(root.public(), truncated, log.head()),
        Err(AuditError::Truncated { .. })
    ));
}

#[test]
fn strangers_cannot_append() {
    let (root, mut log, _) = sample_log();
    let stranger = SecretKey::generate();
    let err = log
        .append(
            &stranger,
            UnixTime(99),
            AuditAction::RelayAdded {
                address: "/ip4/127.0.0.1/tcp/1".into(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, AuditError::UnknownActor(_)));
    // The root can.
    log.append(
        &root,
        UnixTime(99),
        AuditAction::RelayAdded {
            address: "/ip4/127.0.0.1/tcp/1".into(),
        },
    )
    .unwrap();
}
