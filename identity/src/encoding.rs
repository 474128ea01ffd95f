//! The canonical binary encoding every signed structure uses.
//!
//! One value has exactly one encoding: fixed-width big-endian integers, `u16`-length-prefixed
//! byte strings with a per-field maximum, one-byte option and enum tags, and no trailing bytes.
//! Because the encoding is canonical, a signature over it is a signature over the value, and the
//! decoder can reject anything that is not byte-for-byte what the encoder would produce.
//!
//! The `Reader` never panics and never allocates more than the input it was given: every length
//! is checked against both a field maximum and the bytes remaining before anything is copied.

use thiserror::Error;

/// Why a byte string is not a valid encoding. Every variant names the field that failed, so an
/// error from deep inside a token still says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated: {what} needs {needed} more bytes but only {remaining} remain")]
    Truncated {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    /// The value was complete but bytes followed it.
    #[error("{count} unexpected bytes after the end of {what}")]
    TrailingBytes { what: &'static str, count: usize },
    /// A length prefix was larger than the field allows.
    #[error("{what} is {len} long, more than the {max} allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A version this build does not understand.
    #[error(
        "{what} has version {version}, but this build only reads version {supported}; upgrade Jarvis"
    )]
    UnknownVersion {
        what: &'static str,
        version: u8,
        supported: u8,
    },
    /// A field whose bytes decode but whose value is not allowed.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

impl DecodeError {
    /// A field whose bytes decode but whose value is not allowed.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

/// Appends canonical encodings to a buffer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer that will not reallocate below `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
        }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A `u16` length and the bytes. Callers only pass values their types already bounded; a
    /// longer slice is truncated to `u16::MAX`, which the matching reader then rejects, rather
    /// than panicking in an encoder.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.buf
            .extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads a canonical encoding; see the module documentation for its guarantees.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Everything left (the caller has bounded the whole input).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Exactly `n` raw bytes (the caller has bounded `n`).
    pub fn take_bytes(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        self.take(what, n)
    }

    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                remaining: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(what, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A `u16`-length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        self.take(what, len)
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(what, max)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::invalid(what, "not UTF-8"))
    }

    /// A one-byte version that must equal `supported`.
    pub fn version(&mut self, what: &'static str, supported: u8) -> Result<(), DecodeError> {
        let version = self.u8(what)?;
        if version != supported {
            return Err(DecodeError::UnknownVersion {
                what,
                version,
                supported,
            });
        }
        Ok(())
    }

    /// A presence tag for an optional field: 0 absent, 1 present, anything else invalid.
    pub fn present(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::invalid(what, format!("presence tag {other}"))),
        }
    }

    /// Ends decoding: any byte left over is an error.
    pub fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what,
                count: self.rest.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_rejects_truncation_length_and_trailing_bytes() {
        let mut w = Writer::new();
        w.u8(7).str("hello").u64(42);
        let bytes = w.finish();

        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.str("b", 5).unwrap(), "hello");
        assert_eq!(r.u64("c").unwrap(), 42);
        r.finish("value").unwrap();

        let mut r = Reader::new(&bytes);
        r.u8("a").unwrap();
        assert!(matches!(r.str("b", 4), Err(DecodeError::TooLong { .. })));

        let mut r = Reader::new(&bytes[..bytes.len() - 1]);
        r.u8("a").unwrap();
        r.str("b", 5).unwrap();
        assert!(matches!(r.u64("c"), Err(DecodeError::Truncated { .. })));

        let mut longer = bytes.clone();
        longer.push(0);
        let mut r = Reader::new(&longer);
        r.u8("a").unwrap();
        r.str("b", 5).unwrap();
        r.u64("c").unwrap();
        assert!(matches!(
            r.finish("value"),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
    }
}
