//! The fixed 128-byte file header (`docs/FORMAT.md` §3).

use crate::codec::{Cursor, Encoder, crc_matches};
use crate::error::{FormatError, Section};
use crate::limits;

/// The first eight bytes of every `.edq` file. The high first byte and the CR LF / SUB / LF
/// sequence (as in PNG) expose 7-bit and text-mode transfers.
pub const MAGIC: [u8; 8] = *b"\x89EDQ\r\n\x1a\n";
/// The major version this crate reads and writes. A reader rejects any other major.
pub const VERSION_MAJOR: u16 = 1;
/// The highest minor version this crate writes: 1 adds the time-step table of the activation
/// quantizers, 2 weight records of 5 to 7 bits (each file is written with the lowest minor
/// that can read it).
pub const VERSION_MINOR: u16 = 2;
/// Written as a little-endian `u32`; read back as `0x04030201` it reveals a big-endian file.
pub const BYTE_ORDER_MARK: u32 = 0x0102_0304;
/// Size of the header in this major version.
pub const HEADER_SIZE: u32 = 128;
/// Alignment the writer uses unless told otherwise.
pub const DEFAULT_ALIGNMENT: u32 = 64;
/// Alignment of the metadata, graph and tensor-table sections.
pub const SECTION_ALIGN: u64 = 8;

/// Location and checksum of one section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SectionInfo {
    /// Absolute byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// CRC-32 (IEEE, as zlib's `crc32`) of the section's bytes.
    pub crc32: u32,
}

impl SectionInfo {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// The decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Major version.
    pub version_major: u16,
    /// Minor version.
    pub version_minor: u16,
    /// Alignment of tensor data, a power of two ≥ 64.
    pub alignment: u32,
    /// Exact length of the file in bytes.
    pub file_length: u64,
    /// The metadata section.
    pub metadata: SectionInfo,
    /// The graph section.
    pub graph: SectionInfo,
    /// The tensor table section.
    pub tensors: SectionInfo,
    /// Absolute offset of the data section (a multiple of `alignment`).
    pub data_offset: u64,
    /// Length of the data section; it ends the file.
    pub data_length: u64,
}

impl Header {
    /// The three structured sections with their names.
    pub fn sections(&self) -> [(Section, SectionInfo); 3] {
        [(Section::Metadata, self.metadata), (Section::Graph, self.graph), (Section::Tensors, self.tensors)]
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_SIZE as usize] {
        let mut e = Encoder::default();
        e.buf.extend_from_slice(&MAGIC);
        e.u16(self.version_major);
        e.u16(self.version_minor);
        e.u32(BYTE_ORDER_MARK);
        e.u32(HEADER_SIZE);
        e.u32(self.alignment);
        e.u64(self.file_length);
        for (_, s) in self.sections() {
            e.u64(s.offset);
            e.u64(s.length);
            e.u32(s.crc32);
            e.u32(0);
        }
        e.u64(self.data_offset);
        e.u64(self.data_length);
        e.u32(0);
        let crc = crc32fast::hash(&e.buf);
        e.u32(crc);
        let mut out = [0u8; HEADER_SIZE as usize];
        out.copy_from_slice(&e.buf);
        out
    }

    /// Decodes and checks the header of a file of `bytes.len()` bytes: identity fields, header
    /// checksum, then every size, offset and overlap. Section contents are not read.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Header, FormatError> {
        let mut c = Cursor::new(&bytes[..bytes.len().min(HEADER_SIZE as usize)], 0, "header");
        let magic: [u8; 8] = c.take(8)?.try_into().unwrap_or_default();
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version_major = c.u16()?;
        let version_minor = c.u16()?;
        if version_major != VERSION_MAJOR {
            return Err(FormatError::UnsupportedVersion {
                found_major: version_major,
                found_minor: version_minor,
                supported: VERSION_MAJOR,
            });
        }
        match c.u32()? {
            BYTE_ORDER_MARK => {}
            m if m == BYTE_ORDER_MARK.swap_bytes() => {
                return Err(FormatError::WrongByteOrder { found: m });
            }
            m => return Err(FormatError::BadByteOrderMark { found: m }),
        }
        let header_size = c.u32()?;
        if header_size != HEADER_SIZE {
            return Err(FormatError::BadHeaderSize { found: header_size, expected: HEADER_SIZE });
        }
        let alignment = c.u32()?;
        let file_length = c.u64()?;
        let mut sections = [SectionInfo::default(); 3];
        let mut reserved = [(0u64, 0u32); 4];
        for (s, r) in sections.iter_mut().zip(&mut reserved) {
            s.offset = c.u64()?;
            s.length = c.u64()?;
            s.crc32 = c.u32()?;
            *r = (c.offset(), c.u32()?);
        }
        let data_offset = c.u64()?;
        let data_length = c.u64()?;
        reserved[3] = (c.offset(), c.u32()?);
        let stored = c.u32()?;
        let computed = crc32fast::hash(&bytes[..HEADER_SIZE as usize - 4]);
        if !crc_matches(stored, computed) {
            return Err(FormatError::HeaderChecksum { stored, computed });
        }
        // Checked after the checksum, so that random corruption reads as a checksum error and
        // only a deliberately re-sealed header reaches the field checks.
        for (at, v) in reserved {
            if v != 0 {
                let i = v.to_le_bytes().iter().position(|&x| x != 0).unwrap_or(0);
                return Err(FormatError::ReservedNonZero { offset: at + i as u64, found: v.to_le_bytes()[i] });
            }
        }

        if !alignment.is_power_of_two() || !(limits::MIN_ALIGNMENT..=limits::MAX_ALIGNMENT).contains(&alignment) {
            return Err(FormatError::BadAlignment {
                found: alignment,
                min: limits::MIN_ALIGNMENT,
                max: limits::MAX_ALIGNMENT,
            });
        }
        let actual = bytes.len() as u64;
        if file_length != actual {
            return Err(FormatError::FileLength { declared: file_length, actual });
        }
        let h = Header {
            version_major,
            version_minor,
            alignment,
            file_length,
            metadata: sections[0],
            graph: sections[1],
            tensors: sections[2],
            data_offset,
            data_length,
        };
        h.check_layout()?;
        Ok(h)
    }

    /// Bounds, alignment and overlap rules of §3.2.
    pub(crate) fn check_layout(&self) -> Result<(), FormatError> {
        let hs = u64::from(HEADER_SIZE);
        let align = u64::from(self.alignment);
        if self.data_offset < hs {
            return Err(FormatError::SectionBounds {
                section: Section::Data,
                offset: self.data_offset,
                length: self.data_length,
                min: hs,
                max: self.file_length,
            });
        }
        if !self.data_offset.is_multiple_of(align) {
            return Err(FormatError::SectionMisaligned { section: Section::Data, offset: self.data_offset, align });
        }
        if self.data_offset.checked_add(self.data_length) != Some(self.file_length) {
            return Err(FormatError::SectionBounds {
                section: Section::Data,
                offset: self.data_offset,
                length: self.data_length,
                min: self.data_offset,
                max: self.file_length,
            });
        }
        let secs = self.sections();
        for (name, s) in secs {
            if !s.offset.is_multiple_of(SECTION_ALIGN) {
                return Err(FormatError::SectionMisaligned { section: name, offset: s.offset, align: SECTION_ALIGN });
            }
            if s.length > limits::MAX_SECTION_BYTES {
                return Err(FormatError::LimitExceeded {
                    what: "section length",
                    offset: s.offset,
                    value: s.length,
                    limit: limits::MAX_SECTION_BYTES,
                });
            }
            if s.offset < hs || s.offset.checked_add(s.length).is_none_or(|end| end > self.data_offset) {
                return Err(FormatError::SectionBounds {
                    section: name,
                    offset: s.offset,
                    length: s.length,
                    min: hs,
                    max: self.data_offset,
                });
            }
        }
        for i in 0..3 {
            for j in i + 1..3 {
                let (a, b) = (secs[i].1, secs[j].1);
                if a.length > 0 && b.length > 0 && a.offset < b.end() && b.offset < a.end() {
                    return Err(FormatError::SectionOverlap {
                        a: secs[i].0,
                        b: secs[j].0,
                        offset: a.offset.max(b.offset),
                    });
                }
            }
        }
        Ok(())
    }

    /// The byte ranges of the header region (`[HEADER_SIZE, data_offset)`) not covered by a
    /// section: they must be zero.
    pub(crate) fn header_region_gaps(&self) -> Vec<(u64, u64)> {
        let mut spans: Vec<(u64, u64)> =
            self.sections().iter().filter(|(_, s)| s.length > 0).map(|(_, s)| (s.offset, s.end())).collect();
        spans.sort_unstable();
        gaps(u64::from(HEADER_SIZE), self.data_offset, &spans)
    }
}

/// The sub-ranges of `[start, end)` not covered by the sorted, disjoint `spans`.
pub(crate) fn gaps(start: u64, end: u64, spans: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = start;
    for &(s, e) in spans {
        if s > pos {
            out.push((pos, s));
        }
        pos = pos.max(e);
    }
    if end > pos {
        out.push((pos, end));
    }
    out
}
