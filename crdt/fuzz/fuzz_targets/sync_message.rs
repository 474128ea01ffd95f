//! Sync messages from a peer: any bytes decode to a message or an error; messages re-encode to
//! the bytes they came from.
#![no_main]
use jarvis_crdt::SyncMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = SyncMessage::decode(data) {
        assert_eq!(message.encode(), data);
    }
});
