//! Revocation-record decoding and verification never panic; records are canonical.
#![no_main]
use jarvis_identity::{Revocation, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Revocation::decode(data) {
        assert_eq!(record.encode(), data);
        let _ = record.verify(&SecretKey::from_seed(&[7; 32]).public());
    }
});
