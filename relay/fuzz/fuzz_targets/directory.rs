//! The relay's directory messages from arbitrary bytes: requests and responses decode or are
//! refused with a reason, and every heartbeat that decodes is taken or refused by the listing
//! (for a device and a GPU peer), with the views staying within bounds; every relay a response
//! lists is checked as a device checks it (`listed_relay`), and none made up is taken. Nothing
//! panics.
#![no_main]
use jarvis_identity::{CertKind, Name, Roles, SecretKey, UnixTime, Verified};
use jarvis_mesh::directory::{self, MAX_ADDRESSES, Request, Response};
use jarvis_relay::listing::Listing;
use libfuzzer_sys::fuzz_target;

fn member(kind: CertKind, name: &str, user: Option<&str>) -> Option<Verified> {
    Some(Verified {
        subject: SecretKey::generate().public(),
        kind,
        name: Name::new(name).ok()?,
        roles: Roles::MEMBER,
        user: match user {
            Some(u) => Some(Name::new(u).ok()?),
            None => None,
        },
        user_key: None,
        expires_at: UnixTime(u64::MAX),
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Response::Directory(listed)) = directory::decode::<Response>(data) {
        let root = SecretKey::from_seed(&[7; 32]).public();
        let none = jarvis_identity::RevocationSet::new(root);
        for relay in &listed.relays {
            // No chain the fuzzer writes is signed by this root's (unknown) secret key.
            assert!(
                jarvis_mesh::relays::listed_relay(relay, &root, UnixTime(1), &none).is_err()
            );
        }
    }
    let (Some(laptop), Some(gpu)) = (
        member(CertKind::Device, "laptop", Some("alice")),
        member(CertKind::Gpu, "gpu", None),
    ) else {
        return;
    };
    let mut listing = Listing::<u8>::default();
    let mut now = 0u64;
    for (i, chunk) in data.split(|b| *b == 0xff).enumerate() {
        now += 1000;
        let who = if i % 2 == 0 { &laptop } else { &gpu };
        if let Ok(Request::Heartbeat { addresses, gpu }) = directory::decode::<Request>(chunk) {
            let peer = u8::try_from(i % 4).unwrap_or(0);
            if listing.heartbeat(peer, who, addresses, gpu, now).is_ok() {
                let view = listing.view(&peer, who, now);
                assert!(view
                    .devices
                    .iter()
                    .chain(&view.gpus)
                    .all(|e| e.addresses.len() <= MAX_ADDRESSES));
            }
        }
        listing.expire(now);
    }
});
