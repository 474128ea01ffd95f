//! The mesh's authentication hello, the refusal that may answer it, and the pairing request, as
//! received from any peer that connects: decoding and the gate never panic.
#![no_main]
use jarvis_identity::hello::{
    check_hello, decode_refusal, encode_refusal, Hello, MAX_REFUSAL_REASON_BYTES,
};
use jarvis_identity::{RevocationSet, SecretKey, UnixTime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = SecretKey::from_seed(&[7; 32]).public();
    if let Ok(hello) = Hello::decode(data, &root) {
        let again = Hello::decode(&hello.encode(&root), &root).unwrap();
        assert_eq!(again.chain, hello.chain);
        assert_eq!(again.digest, hello.digest);
    }
    // The parser under the seal, on arbitrary bodies.
    if let Ok(hello) = Hello::decode(&jarvis_identity::hello::seal(data, &root), &root) {
        assert_eq!(hello.chain.encode().len() + 4 + 32, data.len());
    }
    let peer = SecretKey::from_seed(&[8; 32]).public().to_libp2p_peer_id().unwrap();
    let set = RevocationSet::new(root);
    let _ = check_hello(&root, &set, peer, data, UnixTime(1_800_000_000));
    let _ = jarvis_identity::enrol::decode_pair_request(data);
    // An answer is a hello or a refusal, never both; a reason is bounded and printable.
    if let Some(reason) = decode_refusal(data) {
        assert!(Hello::decode(data, &root).is_err());
        assert!(reason.len() <= 3 * MAX_REFUSAL_REASON_BYTES);
        assert!(!reason.chars().any(char::is_control));
        if reason.len() <= MAX_REFUSAL_REASON_BYTES {
            assert_eq!(decode_refusal(&encode_refusal(&reason)).as_deref(), Some(reason.as_str()));
        }
    }
});
