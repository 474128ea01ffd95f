//! Certificate decoding: any bytes give a certificate or an error; a certificate re-encodes to
//! exactly the bytes it came from (the encoding is canonical).
#![no_main]
use jarvis_identity::Certificate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = Certificate::decode(data) {
        assert_eq!(cert.encode(), data);
    }
});
