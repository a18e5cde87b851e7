//! Little-endian primitive encoding and a bounds-checked cursor that knows the absolute file
//! offset of every byte it reads, so that every decoding error can name where it happened.

use crate::error::FormatError;
use crate::limits;

/// Whether a stored checksum matches. Fuzzing builds (`--cfg fuzzing`, set by cargo-fuzz)
/// accept any checksum so that mutated inputs reach the structural checks behind them.
pub(crate) fn crc_matches(stored: u32, computed: u32) -> bool {
    cfg!(fuzzing) || stored == computed
}

/// A read cursor over one region of the file.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Absolute file offset of `bytes[0]`.
    base: u64,
    /// What region this is, for error messages ("graph section", ...).
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8], base: u64, what: &'static str) -> Self {
        Cursor { bytes, pos: 0, base, what }
    }

    /// Absolute file offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::Truncated {
                what: self.what,
                offset: self.offset(),
                need: n as u64,
                have: self.remaining() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub(crate) fn f32(&mut self) -> Result<f32, FormatError> {
        Ok(f32::from_le_bytes(self.array()?))
    }
    pub(crate) fn f64(&mut self) -> Result<f64, FormatError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// A reserved field that must be zero in this version.
    pub(crate) fn reserved(&mut self, n: usize) -> Result<(), FormatError> {
        let at = self.offset();
        let b = self.take(n)?;
        if let Some(i) = b.iter().position(|&x| x != 0) {
            return Err(FormatError::ReservedNonZero { offset: at + i as u64, found: b[i] });
        }
        Ok(())
    }

    /// A count, checked against a cap and against the bytes left (each element takes at least
    /// `min_elem_bytes`), so that a hostile count can neither exceed limits nor trigger a huge
    /// allocation.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        limit: u64,
        min_elem_bytes: usize,
    ) -> Result<usize, FormatError> {
        let at = self.offset();
        let n = u64::from(self.u32()?);
        self.check_count(what, at, n, limit, min_elem_bytes)
    }

    /// Like [`Cursor::count`] for a count already read (at offset `at`).
    pub(crate) fn check_count(
        &self,
        what: &'static str,
        at: u64,
        n: u64,
        limit: u64,
        min_elem_bytes: usize,
    ) -> Result<usize, FormatError> {
        if n > limit {
            return Err(FormatError::LimitExceeded { what, offset: at, value: n, limit });
        }
        let need = n.saturating_mul(min_elem_bytes as u64);
        if need > self.remaining() as u64 {
            return Err(FormatError::Truncated {
                what: self.what,
                offset: self.offset(),
                need,
                have: self.remaining() as u64,
            });
        }
        Ok(n as usize)
    }

    /// A length-prefixed UTF-8 string (`u32` byte length, then the bytes; no terminator).
    /// Returns the string and the absolute offset of its first byte.
    pub(crate) fn str(&mut self, what: &'static str, max_len: u64) -> Result<(&'a str, u64), FormatError> {
        let n = self.count(what, max_len, 1)?;
        let at = self.offset();
        let b = self.take(n)?;
        let s = std::str::from_utf8(b)
            .map_err(|e| FormatError::InvalidUtf8 { what, offset: at + e.valid_up_to() as u64 })?;
        Ok((s, at))
    }

    /// A tensor reference: an index into the tensor table, or `None` for [`limits::NONE`].
    pub(crate) fn opt_u32(&mut self) -> Result<Option<u32>, FormatError> {
        let v = self.u32()?;
        Ok((v != limits::NONE).then_some(v))
    }

    /// Errors unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), FormatError> {
        if self.remaining() != 0 {
            return Err(FormatError::TrailingBytes {
                what: self.what,
                offset: self.offset(),
                count: self.remaining() as u64,
            });
        }
        Ok(())
    }
}

/// Append-only little-endian encoder.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    pub(crate) buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }
    /// A count or length as `u32`; callers validate against the limits first, which are all
    /// below `u32::MAX`.
    pub(crate) fn len32(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.len32(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub(crate) fn opt_u32(&mut self, v: Option<u32>) {
        self.u32(v.unwrap_or(limits::NONE));
    }
}
