//! Audit-log parsing and verification never panic, with or without a recorded head.
#![no_main]
use jarvis_identity::{AuditEntry, AuditLog, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = SecretKey::from_seed(&[7; 32]).public();
    let _ = AuditLog::verify(root, data, None);
    let _ = AuditLog::verify(root, data, Some((3, [0; 32])));
    if let Ok(entry) = AuditEntry::decode(data) {
        assert_eq!(entry.encode(), data);
    }
});
