//! Sealed key files read from disk: a damaged or hostile file is an error, never a panic or a
//! hang (the scrypt work factor is capped).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = jarvis_identity::sealed::unseal(data, "passphrase");
});
