//! Chain decoding and verification against a fixed root never panic; decoded chains are
//! canonical.
#![no_main]
use jarvis_identity::{CertChain, RevocationSet, SecretKey, UnixTime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(chain) = CertChain::decode(data) {
        assert_eq!(chain.encode(), data);
        let root = SecretKey::from_seed(&[7; 32]).public();
        let _ = chain.verify(&root, UnixTime(1_800_000_000), &RevocationSet::new(root));
        if let Some(leaf) = chain.leaf() {
            let _ = chain.verify(&leaf.issuer(), UnixTime(0), &RevocationSet::new(leaf.issuer()));
        }
    }
});
