//! A device's replica fed arbitrary sync messages: every input is handled or refused with an
//! error, and the session never panics.
#![no_main]
use jarvis_crdt::{MemStore, Replica, Session, SyncMessage};
use jarvis_identity::SecretKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut replica = Replica::device(
        MemStore::new(),
        SecretKey::from_seed(&[1; 32]),
        age::x25519::Identity::generate(),
    );
    let mut session = Session::new();
    for chunk in data.split(|b| *b == 0xff) {
        if let Ok(message) = SyncMessage::decode(chunk) {
            let _ = session.handle(message, 0, &mut replica);
        }
    }
});
