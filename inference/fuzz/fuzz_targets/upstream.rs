//! What an OpenAI-compatible backend sends a GPU peer, from arbitrary bytes: the event stream cut
//! anywhere reads the same as whole (or fails the same way), and the load and model documents parse or are refused. Nothing panics.
#![no_main]
use jarvis_inference::upstream::{Events, parse_metrics, parse_models, parse_slots};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let whole = Events::default().push(rest);
    let mut pieces = Events::default();
    let mut events = Vec::new();
    let mut failed = None;
    for piece in rest.chunks(usize::from(cut % 13) + 1) {
        match pieces.push(piece) {
            Ok(more) => events.extend(more),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    match (whole, failed) {
        (Ok(all), None) => assert_eq!(all, events),
        (Err(a), Some(b)) => assert_eq!(a, b),
        (whole, piecewise) => panic!("whole {whole:?}, in pieces {piecewise:?}"),
    }
    if let Some((busy, _)) = parse_metrics(rest) {
        let _ = busy.in_flight();
    }
    let _ = parse_slots(rest);
    if let Some(models) = parse_models(rest) {
        assert!(models.len() <= 64 && models.iter().all(|m| !m.id.is_empty() && m.id.len() <= 256));
    }
});
