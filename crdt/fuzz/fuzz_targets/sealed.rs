//! Sealed changes, key records and snapshots, as stored or received: decode, verify and open
//! never panic.
#![no_main]
use jarvis_crdt::envelope::{DocKey, KeyRecord, SealedChange, SealedSnapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = DocKey::generate();
    if let Ok(c) = SealedChange::decode(data) {
        assert_eq!(c.encode(), data);
        let _ = c.verify();
        let _ = c.open(&key);
    }
    if let Ok(k) = KeyRecord::decode(data) {
        let _ = k.verify();
        let _ = k.unwrap_key(&age::x25519::Identity::generate());
    }
    if let Ok(s) = SealedSnapshot::decode(data) {
        let _ = s.verify();
        let _ = s.open(&key);
    }
});
