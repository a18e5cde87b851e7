//! Element types of stored tensors.

use std::fmt;

/// The element type of a tensor in the tensor table.
///
/// The numeric codes are part of the file format (`docs/FORMAT.md` §6) and are never
/// reused: a retired type keeps its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE-754 binary32, little-endian.
    F32,
    /// IEEE-754 binary16, little-endian.
    F16,
    /// Unsigned 8-bit integer.
    U8,
    /// Two's-complement signed 8-bit integer.
    I8,
    /// Two's-complement signed 32-bit integer, little-endian.
    I32,
    /// Two's-complement signed 4-bit integers, two per byte: element `2i` in the low nibble
    /// (bits 0–3) of byte `i`, element `2i + 1` in the high nibble (bits 4–7). With an odd
    /// element count the last high nibble is zero.
    I4,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 6] = [DType::F32, DType::F16, DType::U8, DType::I8, DType::I32, DType::I4];

    /// The on-disk code of this dtype.
    pub const fn code(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::I32 => 4,
            DType::I4 => 5,
        }
    }

    /// The dtype with the given on-disk code, if there is one.
    pub const fn from_code(code: u8) -> Option<DType> {
        Some(match code {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::U8,
            3 => DType::I8,
            4 => DType::I32,
            5 => DType::I4,
            _ => return None,
        })
    }

    /// The lower-case name used in files, errors and `edadm inspect`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::I32 => "i32",
            DType::I4 => "i4",
        }
    }

    /// Bytes needed to store `numel` elements, or `None` on overflow.
    pub const fn storage_bytes(self, numel: u64) -> Option<u64> {
        match self {
            DType::F32 | DType::I32 => numel.checked_mul(4),
            DType::F16 => numel.checked_mul(2),
            DType::U8 | DType::I8 => Some(numel),
            DType::I4 => Some(numel.div_ceil(2)),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (i, d) in DType::ALL.iter().enumerate() {
            assert_eq!(d.code() as usize, i);
            assert_eq!(DType::from_code(d.code()), Some(*d));
        }
        assert_eq!(DType::from_code(6), None);
        assert_eq!(DType::from_code(255), None);
    }

    #[test]
    fn storage_sizes() {
        assert_eq!(DType::I4.storage_bytes(5), Some(3));
        assert_eq!(DType::I4.storage_bytes(0), Some(0));
        assert_eq!(DType::F16.storage_bytes(3), Some(6));
        assert_eq!(DType::F32.storage_bytes(u64::MAX / 2), None);
    }
}
