//! A fleet announcement from arbitrary text: it decodes or is refused with a reason, and what
//! decodes is within bounds (runs of at most `MAX_RUN` changes, 16-byte ids). Nothing panics.
#![no_main]
use jarvis_relay::announce::Stored;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(stored) = Stored::decode(text) {
        for (_, _, first, last) in &stored.changes {
            assert!(*first >= 1 && last >= first);
        }
    }
});
