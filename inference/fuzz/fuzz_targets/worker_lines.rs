//! Lines from a worker (or, in the worker, from the node): any bytes decode to a message or an
//! error, and a decoded message encodes to one line that decodes again.
#![no_main]
use jarvis_inference::protocol::{Command, Event, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode::<Event>(data) {
        let line = encode(&event).expect("an event encodes");
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        decode::<Event>(line.strip_suffix(b"\n").unwrap_or(&line)).expect("and decodes again");
    }
    if let Ok(command) = decode::<Command>(data) {
        let line = encode(&command).expect("a command encodes");
        decode::<Command>(line.strip_suffix(b"\n").unwrap_or(&line)).expect("and decodes again");
    }
});
