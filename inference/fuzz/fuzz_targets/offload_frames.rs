//! Frames on an offload stream (a GPU peer reads asks, a node reads replies, both from peers it
//! does not control): any bytes, in any pieces, give frames or an error and never a panic, and a
//! decoded frame encodes to bytes that decode to it again.
#![no_main]
use jarvis_inference::offload::{Ask, Frames, Reply, encode};
use libfuzzer_sys::fuzz_target;

fn check<T>(data: &[u8], max: usize)
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut frames = Frames::new(max);
    for chunk in data.chunks(split) {
        frames.push(chunk);
        loop {
            match frames.next_frame::<T>() {
                Ok(Some(message)) => {
                    let mut again = Frames::new(usize::MAX);
                    again.push(&encode(&message));
                    assert_eq!(again.next_frame::<T>().expect("re-encoded"), Some(message));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<Ask>(data, 1 << 16);
    check::<Reply>(data, 1 << 16);
});
