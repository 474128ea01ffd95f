//! Revocation-set decoding (as received from a relay or read from disk) never panics.
#![no_main]
use jarvis_identity::{RevocationSet, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = SecretKey::from_seed(&[7; 32]).public();
    if let Ok(set) = RevocationSet::decode(&root, data) {
        let _ = set.digest();
    }
});
