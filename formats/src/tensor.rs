//! The tensor table (`docs/FORMAT.md` §6) and zero-copy tensor views.

use std::collections::HashMap;

use crate::codec::{Cursor, Encoder, crc_matches};
use crate::dtype::DType;
use crate::error::{FormatError, TensorProblem};
use crate::graph::TensorId;
use crate::limits;

/// One tensor-table entry as validated: the same shape whether parsed or about to be written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRecord<'a> {
    pub(crate) name: &'a str,
    pub(crate) dtype: DType,
    pub(crate) shape: &'a [u64],
    /// Relative to the data section.
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) crc32: u32,
    /// Absolute offset of the entry (0 before the file is laid out).
    pub(crate) entry_offset: u64,
}

/// A parsed entry; the name stays in the file's bytes.
#[derive(Clone, Debug)]
pub(crate) struct TensorEntry {
    pub(crate) name: std::ops::Range<usize>,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<u64>,
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) crc32: u32,
    pub(crate) entry_offset: u64,
}

/// Number of elements of `shape`, or `None` on overflow. The empty shape is a scalar.
pub fn numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
}

fn problem(i: usize, r: &TensorRecord<'_>, problem: TensorProblem) -> FormatError {
    FormatError::Tensor { index: i as u32, name: r.name.to_owned(), offset: r.entry_offset, problem }
}

/// Checks every rule of §6.2 except the checksums (which [`crate::ModelFile::verify`] checks).
pub(crate) fn validate_tensor_table(
    records: &[TensorRecord<'_>],
    alignment: u64,
    data_length: u64,
) -> Result<(), FormatError> {
    if records.len() as u64 > limits::MAX_TENSORS {
        return Err(FormatError::LimitExceeded {
            what: "tensor count",
            offset: records.first().map_or(0, |r| r.entry_offset),
            value: records.len() as u64,
            limit: limits::MAX_TENSORS,
        });
    }
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        if r.name.is_empty() {
            return Err(FormatError::EmptyName { what: "tensor name", offset: r.entry_offset });
        }
        if r.name.len() as u64 > limits::MAX_NAME_BYTES {
            return Err(FormatError::LimitExceeded {
                what: "tensor name length",
                offset: r.entry_offset,
                value: r.name.len() as u64,
                limit: limits::MAX_NAME_BYTES,
            });
        }
        if names.insert(r.name, i).is_some() {
            return Err(FormatError::DuplicateName {
                what: "tensor name",
                name: r.name.to_owned(),
                offset: r.entry_offset,
            });
        }
        if r.shape.len() as u64 > limits::MAX_RANK {
            return Err(FormatError::LimitExceeded {
                what: "tensor rank",
                offset: r.entry_offset,
                value: r.shape.len() as u64,
                limit: limits::MAX_RANK,
            });
        }
        let expected = numel(r.shape)
            .and_then(|n| r.dtype.storage_bytes(n))
            .ok_or_else(|| problem(i, r, TensorProblem::ShapeOverflow { shape: r.shape.to_vec() }))?;
        if expected != r.length {
            return Err(problem(
                i,
                r,
                TensorProblem::LengthMismatch { dtype: r.dtype, shape: r.shape.to_vec(), length: r.length, expected },
            ));
        }
        if !r.offset.is_multiple_of(alignment) {
            return Err(problem(i, r, TensorProblem::Misaligned { offset: r.offset, align: alignment }));
        }
        if r.offset.checked_add(r.length).is_none_or(|end| end > data_length) {
            return Err(problem(i, r, TensorProblem::OutOfBounds { offset: r.offset, length: r.length, data_length }));
        }
    }
    // Overlaps: sort the non-empty extents by offset and compare neighbours.
    let mut order: Vec<usize> = (0..records.len()).filter(|&i| records[i].length > 0).collect();
    order.sort_unstable_by_key(|&i| (records[i].offset, i));
    for w in order.windows(2) {
        let (a, b) = (&records[w[0]], &records[w[1]]);
        if b.offset < a.offset + a.length {
            return Err(problem(
                w[1],
                b,
                TensorProblem::Overlap { other: w[0] as u32, other_name: a.name.to_owned(), at: b.offset },
            ));
        }
    }
    Ok(())
}

/// Fixed bytes of an entry besides its name and dims.
const ENTRY_FIXED_BYTES: usize = 4 + 1 + 1 + 2 + 4 + 8 + 8;

pub(crate) fn encode_tensor_table(records: &[TensorRecord<'_>]) -> Vec<u8> {
    let mut e = Encoder::default();
    e.len32(records.len());
    for r in records {
        e.str(r.name);
        e.u8(r.dtype.code());
        e.u8(r.shape.len() as u8);
        e.u16(0);
        e.u32(r.crc32);
        e.u64(r.offset);
        e.u64(r.length);
        for &d in r.shape {
            e.u64(d);
        }
    }
    e.buf
}

/// Decodes the tensor table (`bytes` are the section, `base` its absolute offset).
pub(crate) fn decode_tensor_table(bytes: &[u8], base: u64) -> Result<Vec<TensorEntry>, FormatError> {
    let mut c = Cursor::new(bytes, base, "tensor table");
    let n = c.count("tensor count", limits::MAX_TENSORS, ENTRY_FIXED_BYTES + 1)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let entry_offset = c.offset();
        let (name, name_at) = c.str("tensor name", limits::MAX_NAME_BYTES)?;
        let at = c.offset();
        let code = c.u8()?;
        let dtype =
            DType::from_code(code).ok_or(FormatError::UnknownCode { what: "dtype", code: code.into(), offset: at })?;
        let at = c.offset();
        let rank = u64::from(c.u8()?);
        c.reserved(2)?;
        let crc32 = c.u32()?;
        let offset = c.u64()?;
        let length = c.u64()?;
        let rank = c.check_count("tensor rank", at, rank, limits::MAX_RANK, 8)?;
        let shape = (0..rank).map(|_| c.u64()).collect::<Result<Vec<_>, _>>()?;
        let start = name_at as usize;
        out.push(TensorEntry { name: start..start + name.len(), dtype, shape, offset, length, crc32, entry_offset });
    }
    c.finish()?;
    Ok(out)
}

/// A borrowed view of one tensor of a parsed file: metadata plus its bytes, zero-copy.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// Index in the tensor table.
    pub id: TensorId,
    /// Name.
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Shape (row-major; the last dimension varies fastest).
    pub shape: &'a [u64],
    /// The stored bytes.
    pub data: &'a [u8],
    /// Absolute file offset of `data`.
    pub file_offset: u64,
    /// Stored CRC-32 of `data`.
    pub crc32: u32,
}

#[cfg(target_endian = "little")]
const HOST_LE: bool = true;
#[cfg(not(target_endian = "little"))]
const HOST_LE: bool = false;

impl<'a> TensorView<'a> {
    /// The elements as f32, copied (f32) or converted (f16); `None` for integer dtypes.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        match self.dtype {
            DType::F32 => {
                Some(self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            DType::F16 => {
                Some(self.data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
            }
            _ => None,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        // Validated at parse: the product does not overflow.
        numel(self.shape).unwrap_or(0)
    }

    /// Checks the stored CRC-32 against the data.
    pub fn verify(&self) -> Result<(), FormatError> {
        let computed = crc32fast::hash(self.data);
        if !crc_matches(self.crc32, computed) {
            return Err(FormatError::TensorChecksum {
                index: self.id.0,
                name: self.name.to_owned(),
                offset: self.file_offset,
                stored: self.crc32,
                computed,
            });
        }
        Ok(())
    }

    fn view<T: bytemuck::AnyBitPattern>(&self, want: DType, requested: &'static str) -> Result<&'a [T], FormatError> {
        let err = |reason| FormatError::View { name: self.name.to_owned(), dtype: self.dtype, requested, reason };
        if self.dtype != want {
            return Err(err("wrong dtype"));
        }
        if !HOST_LE && size_of::<T>() > 1 {
            return Err(err("the host is big-endian; decode the little-endian bytes instead"));
        }
        bytemuck::try_cast_slice(self.data).map_err(|_| err("the data is not aligned in memory for this type"))
    }

    /// The data as `f32`; the dtype must be `f32` and the memory aligned to 4 (always true for
    /// a memory-mapped file, whose tensors are aligned to at least 64 bytes).
    pub fn as_f32(&self) -> Result<&'a [f32], FormatError> {
        self.view(DType::F32, "f32")
    }

    /// The data as `f16`.
    pub fn as_f16(&self) -> Result<&'a [half::f16], FormatError> {
        self.view(DType::F16, "f16")
    }

    /// The data as `i32`.
    pub fn as_i32(&self) -> Result<&'a [i32], FormatError> {
        self.view(DType::I32, "i32")
    }

    /// The data as `i8`.
    pub fn as_i8(&self) -> Result<&'a [i8], FormatError> {
        self.view(DType::I8, "i8")
    }

    /// The data as `u8`.
    pub fn as_u8(&self) -> Result<&'a [u8], FormatError> {
        self.view(DType::U8, "u8")
    }

    /// The packed bytes of an `i4` tensor (two elements per byte, low nibble first).
    pub fn as_i4_packed(&self) -> Result<&'a [u8], FormatError> {
        self.view(DType::I4, "packed i4")
    }
}
