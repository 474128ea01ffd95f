//! Token bytes from the model, cut anywhere, with stop strings: whole characters out, never a
//! panic, and the output never contains a stop string.
#![no_main]
use jarvis_inference::text::{StopFilter, Utf8Assembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let stops = vec!["\n\n".to_owned(), "é#".to_owned()];
    let mut utf8 = Utf8Assembler::default();
    let mut filter = StopFilter::new(&stops);
    let mut out = String::new();
    let mut stopped = false;
    for piece in rest.chunks(usize::from(cut % 7) + 1) {
        let f = filter.push(&utf8.push(piece));
        out.push_str(&f.text);
        if f.stopped {
            stopped = true;
            break;
        }
    }
    if !stopped {
        let f = filter.push(&utf8.finish());
        out.push_str(&f.text);
        if !f.stopped {
            out.push_str(&filter.finish());
        }
    }
    if stopped {
        for stop in &stops {
            assert!(!out.contains(stop.as_str()), "{out:?} holds {stop:?}");
        }
    }
});
