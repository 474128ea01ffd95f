//! The mesh's authentication hello and the pairing request, as received from any peer that
//! connects: decoding and the gate never panic.
#![no_main]
use jarvis_identity::hello::{check_hello, Hello};
use jarvis_identity::{RevocationSet, SecretKey, UnixTime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = Hello::decode(data) {
        assert_eq!(hello.encode(), data);
    }
    let root = SecretKey::from_seed(&[7; 32]).public();
    let peer = SecretKey::from_seed(&[8; 32]).public().to_libp2p_peer_id().unwrap();
    let mut set = RevocationSet::new(root);
    let _ = check_hello(&root, &mut set, peer, data, UnixTime(1_800_000_000));
    let _ = jarvis_identity::enrol::decode_pair_request(data);
});
