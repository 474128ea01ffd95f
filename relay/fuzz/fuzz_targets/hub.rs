//! The relay's hub fed arbitrary bytes from two devices of one user and a stranger that was
//! never admitted: every input is taken or refused with a reason, and nothing panics.
#![no_main]
use jarvis_crdt::MemStore;
use jarvis_identity::Name;
use jarvis_relay::hub::{Hub, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        quota_bytes: 4096,
        rate_bytes_per_sec: 2048,
        burst_bytes: 8192,
    };
    let mut hub: Hub<u8, MemStore> = Hub::new(limits, Box::new(|_| Ok(MemStore::new())));
    let Ok(alice) = Name::new("alice") else {
        return;
    };
    let _ = hub.admit(1, alice.clone(), 0);
    let _ = hub.admit(2, alice, 0);
    let mut now = 0;
    // Each 0xff-separated chunk: its first byte picks the sender (and advances the clock).
    for chunk in data.split(|b| *b == 0xff) {
        let Some((&first, message)) = chunk.split_first() else {
            continue;
        };
        now += u64::from(first) * 10;
        let _ = hub.handle(first % 3, message, now);
        if first == 0xfe {
            hub.leave(&1);
        }
        let _ = hub.poll(now);
    }
});
