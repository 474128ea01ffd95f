//! `identity-verify`: how fast a peer checks a device's certificate chain, against raw
//! ed25519-dalek verification of the same signatures.
//!
//! Ours: `CertChain::verify` of a real device chain (root → admin → invite → user → device, four
//! signatures) against the org root, with a revocation set of 1,000 records to look up in.
//! Reference: the same four (key bytes, message, signature) triples verified with ed25519-dalek
//! directly, parsing each key from its bytes as a verifier receiving certificates must. The ratio
//! is chains per second over reference-chains per second: what the chain logic (decoding checks,
//! canonical re-encoding, nesting rules, revocation look-ups) costs on top of the cryptography.

use anyhow::{Context, Result};
use ed25519_dalek::{Signature, VerifyingKey};
use jarvis_identity::{
    CertChain, CertKind, CertTemplate, Certificate, DeviceKeys, Invite, Name, OrgInfo, Revocation,
    RevocationSet, RevocationTarget, Roles, SecretKey, UnixTime,
};

use crate::harness::{Budget, Figure, compare_rates};

pub const NAME: &str = "identity-verify";

/// Builds the chain and the same signatures as raw triples.
struct Fixture {
    root: jarvis_identity::PublicKey,
    chain: CertChain,
    revocations: RevocationSet,
    raw: Vec<([u8; 32], Vec<u8>, Signature)>,
    now: UnixTime,
}

fn fixture() -> Result<Fixture> {
    let now = UnixTime(1_800_000_000);
    let root = SecretKey::generate();
    let admin = SecretKey::generate();
    let admin_cert = Certificate::issue(
        CertTemplate {
            kind: CertKind::Admin,
            subject: admin.public(),
            name: Name::new("admin")?,
            roles: Roles::ADMIN,
            not_before: now,
            not_after: now.saturating_add_secs(3600 * 24 * 365),
            age_recipient: None,
        },
        &root,
    )?;
    let admin_chain = CertChain::new(vec![admin_cert])?;
    let org = OrgInfo {
        name: Name::new("bench")?,
        root: root.public(),
        relays: vec![],
    };
    let invite = Invite::create(
        org,
        Some(&admin_chain),
        &admin,
        Name::new("alice")?,
        Roles::MEMBER,
        now,
        now.saturating_add_secs(3600),
    )?;
    let age_id = jarvis_identity::age::x25519::Identity::generate();
    let redeemed = invite.redeem(
        now,
        None,
        &DeviceKeys {
            key: SecretKey::generate().public(),
            name: &Name::new("laptop")?,
            age_recipient: &age_id.to_public().to_string(),
        },
    )?;
    let mut revocations = RevocationSet::new(root.public());
    for i in 0..1000 {
        let target = if i % 2 == 0 {
            RevocationTarget::Key(SecretKey::generate().public())
        } else {
            RevocationTarget::User(Name::new(&format!("user-{i}"))?)
        };
        revocations.insert(Revocation::issue(
            target,
            "bench",
            now,
            Some(&admin_chain),
            &admin,
        )?)?;
    }
    let raw = jarvis_identity::bench_support::signed_parts(&redeemed.device_chain)
        .into_iter()
        .map(|(key, message, sig)| (key, message, Signature::from_bytes(&sig)))
        .collect();
    Ok(Fixture {
        root: root.public(),
        chain: redeemed.device_chain,
        revocations,
        raw,
        now,
    })
}

pub fn run(quick: bool) -> Result<Vec<Figure>> {
    let f = fixture()?;
    // Both sides must succeed before anything is timed.
    f.chain
        .verify(&f.root, f.now, &f.revocations)
        .context("the benchmark chain does not verify")?;
    let raw_ok = |raw: &[([u8; 32], Vec<u8>, Signature)]| {
        raw.iter().all(|(key, msg, sig)| {
            VerifyingKey::from_bytes(key).is_ok_and(|k| k.verify_strict(msg, sig).is_ok())
        })
    };
    anyhow::ensure!(raw_ok(&f.raw), "the reference signatures do not verify");
    anyhow::ensure!(
        f.raw.len() == f.chain.certs().len(),
        "one signature per certificate"
    );

    let (ours, reference) = compare_rates(
        Budget::new(quick),
        || f.chain.verify(&f.root, f.now, &f.revocations).is_ok(),
        || raw_ok(&f.raw),
    );
    Ok(vec![Figure::compared(
        NAME,
        "chain_verifications_per_sec",
        ours,
        reference,
        ">= 0.8",
        "chains/s",
    )])
}
