//! Everything a person pastes: invites, join requests, bundles, org info and ids.
#![no_main]
use jarvis_identity::{Bundle, Invite, JoinRequest, OrgInfo, PublicKey, UnixTime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = OrgInfo::decode(data);
    let _ = Bundle::decode(data);
    let text = String::from_utf8_lossy(data);
    let _ = text.parse::<PublicKey>();
    if let Ok(request) = JoinRequest::from_token(&text) {
        if let Ok(bundle) = Bundle::from_token(&text) {
            let _ = bundle.check_for(&request, None, UnixTime(1_800_000_000));
        }
    }
    let _ = Invite::from_token(&text);
    // The same bytes behind each token prefix, with a valid checksum, so the fuzzer reaches the
    // decoders behind the armour.
    for kind in [
        jarvis_identity::TokenKind::Invite,
        jarvis_identity::TokenKind::Request,
        jarvis_identity::TokenKind::Bundle,
    ] {
        let armored = jarvis_identity::token::armor(kind, data);
        let _ = Invite::from_token(&armored);
        let _ = JoinRequest::from_token(&armored);
        let _ = Bundle::from_token(&armored);
    }
});
