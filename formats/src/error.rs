//! The error type of this crate: every variant carries the data needed to say exactly what is
//! wrong and, where the problem is in the bytes of a file, the absolute byte offset.

use std::fmt;
use std::path::PathBuf;

use crate::dtype::DType;

/// One of the three structured sections of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// Key-value metadata.
    Metadata,
    /// The graph IR.
    Graph,
    /// The tensor table.
    Tensors,
    /// The tensor data section.
    Data,
}

impl Section {
    /// Lower-case name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Section::Metadata => "metadata section",
            Section::Graph => "graph section",
            Section::Tensors => "tensor table",
            Section::Data => "data section",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can be wrong with the bytes of an `.edq` file, or with a model handed to the
/// writer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A read ran past the end of the file or of a section.
    #[error("truncated {what} at byte {offset}: need {need} more bytes, {have} available")]
    Truncated {
        /// The region being read.
        what: &'static str,
        /// Absolute offset of the read.
        offset: u64,
        /// Bytes the read needed.
        need: u64,
        /// Bytes that were left.
        have: u64,
    },
    /// The first 8 bytes are not the `.edq` magic.
    #[error("not an .edq file: bad magic {found:02x?} at byte 0")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// A major version this reader does not implement.
    #[error(
        "unsupported .edq version {found_major}.{found_minor} at byte 8: this reader supports major version {supported}"
    )]
    UnsupportedVersion {
        /// Major version in the file.
        found_major: u16,
        /// Minor version in the file.
        found_minor: u16,
        /// The major version this reader implements.
        supported: u16,
    },
    /// The byte-order mark reads as the byte-swapped mark: the file was written big-endian.
    #[error("wrong byte order at byte 12: the file is big-endian (mark {found:#010x}); .edq files are little-endian")]
    WrongByteOrder {
        /// The mark as read little-endian.
        found: u32,
    },
    /// The byte-order mark is neither the mark nor its byte swap.
    #[error("bad byte-order mark {found:#010x} at byte 12 (expected 0x01020304)")]
    BadByteOrderMark {
        /// The mark as read little-endian.
        found: u32,
    },
    /// The header-size field does not match this version's header.
    #[error("bad header size {found} at byte 16 (expected {expected})")]
    BadHeaderSize {
        /// Declared size.
        found: u32,
        /// The size of this version's header.
        expected: u32,
    },
    /// The declared alignment is not a power of two in the allowed range.
    #[error("bad alignment {found} at byte 20: must be a power of two in [{min}, {max}]")]
    BadAlignment {
        /// Declared alignment.
        found: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// The declared file length differs from the real one.
    #[error("file length mismatch (field at byte 24): header says {declared} bytes, file has {actual}")]
    FileLength {
        /// Length in the header.
        declared: u64,
        /// Real length.
        actual: u64,
    },
    /// The header checksum does not match.
    #[error("header checksum mismatch (field at byte 124): stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// Stored CRC-32.
        stored: u32,
        /// Computed CRC-32.
        computed: u32,
    },
    /// A section checksum does not match.
    #[error("{section} checksum mismatch (section at byte {offset}): stored {stored:#010x}, computed {computed:#010x}")]
    SectionChecksum {
        /// Which section.
        section: Section,
        /// Absolute offset of the section.
        offset: u64,
        /// Stored CRC-32.
        stored: u32,
        /// Computed CRC-32.
        computed: u32,
    },
    /// A section lies (partly) outside where sections may be.
    #[error("{section} out of bounds: bytes [{offset}, {offset}+{length}) not inside [{min}, {max})")]
    SectionBounds {
        /// Which section.
        section: Section,
        /// Declared offset.
        offset: u64,
        /// Declared length.
        length: u64,
        /// First byte a section may occupy.
        min: u64,
        /// End of the region a section may occupy.
        max: u64,
    },
    /// A section offset is not aligned as required.
    #[error("{section} at byte {offset} is not aligned to {align}")]
    SectionMisaligned {
        /// Which section.
        section: Section,
        /// Declared offset.
        offset: u64,
        /// Required alignment.
        align: u64,
    },
    /// Two sections overlap.
    #[error("{a} and {b} overlap at byte {offset}")]
    SectionOverlap {
        /// First section.
        a: Section,
        /// Second section.
        b: Section,
        /// First overlapping byte.
        offset: u64,
    },
    /// A byte that must be zero (reserved field or padding) is not.
    #[error("reserved or padding byte at {offset} is {found:#04x}, must be 0")]
    ReservedNonZero {
        /// Absolute offset.
        offset: u64,
        /// The byte found.
        found: u8,
    },
    /// A section has bytes left after its last record.
    #[error("{count} trailing bytes in {what} at byte {offset}")]
    TrailingBytes {
        /// The region.
        what: &'static str,
        /// Absolute offset of the first unread byte.
        offset: u64,
        /// How many bytes were left.
        count: u64,
    },
    /// A count or length exceeds its cap.
    #[error("{what} = {value} at byte {offset} exceeds the limit {limit}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// Absolute offset of the field.
        offset: u64,
        /// The value read.
        value: u64,
        /// The cap.
        limit: u64,
    },
    /// A string is not UTF-8.
    #[error("{what} is not valid UTF-8 (byte {offset})")]
    InvalidUtf8 {
        /// Which string.
        what: &'static str,
        /// Offset of the first invalid byte.
        offset: u64,
    },
    /// A name is empty.
    #[error("empty {what} at byte {offset}")]
    EmptyName {
        /// Which kind of name.
        what: &'static str,
        /// Offset of the name (0 when not from a file).
        offset: u64,
    },
    /// A name occurs twice where names must be unique.
    #[error("duplicate {what} {name:?} at byte {offset}")]
    DuplicateName {
        /// Which kind of name.
        what: &'static str,
        /// The name.
        name: String,
        /// Offset of the second occurrence (0 when not from a file).
        offset: u64,
    },
    /// An enumeration code this version does not define.
    #[error("unknown {what} code {code} at byte {offset}")]
    UnknownCode {
        /// Which enumeration.
        what: &'static str,
        /// The code.
        code: u32,
        /// Offset of the field.
        offset: u64,
    },
    /// A value is out of its allowed range.
    #[error("bad {what} at byte {offset}: {detail}")]
    BadValue {
        /// Which field.
        what: &'static str,
        /// Offset of the field.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// A tensor-table entry is inconsistent.
    #[error("tensor {index} {name:?} (entry at byte {offset}): {problem}")]
    Tensor {
        /// Index in the tensor table.
        index: u32,
        /// Its name.
        name: String,
        /// Offset of the entry (0 when not from a file).
        offset: u64,
        /// What is wrong.
        problem: TensorProblem,
    },
    /// A tensor's stored bytes do not match its checksum.
    #[error(
        "tensor {index} {name:?}: data checksum mismatch (data at byte {offset}): stored {stored:#010x}, computed {computed:#010x}"
    )]
    TensorChecksum {
        /// Index in the tensor table.
        index: u32,
        /// Its name.
        name: String,
        /// Absolute offset of the data.
        offset: u64,
        /// Stored CRC-32.
        stored: u32,
        /// Computed CRC-32.
        computed: u32,
    },
    /// The graph is inconsistent.
    #[error("{}", graph_message(*node, name, *offset, problem))]
    Graph {
        /// Node index, when the problem belongs to a node.
        node: Option<u32>,
        /// The node's (or input's/unit's) name, when known.
        name: String,
        /// Offset of the record (0 when not from a file).
        offset: u64,
        /// What is wrong.
        problem: GraphProblem,
    },
    /// A typed view was requested with the wrong type or on misaligned memory.
    #[error("tensor {name:?}: cannot view {dtype} data as {requested}: {reason}")]
    View {
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: DType,
        /// The requested element type.
        requested: &'static str,
        /// Why not.
        reason: &'static str,
    },
    /// The file could not be opened or read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// The I/O error message.
        message: String,
    },
}

fn graph_message(node: Option<u32>, name: &str, offset: u64, problem: &GraphProblem) -> String {
    match node {
        Some(i) => format!("graph node {i} {name:?} (record at byte {offset}): {problem}"),
        None if name.is_empty() => format!("graph (at byte {offset}): {problem}"),
        None => format!("graph {name:?} (record at byte {offset}): {problem}"),
    }
}

impl FormatError {
    /// The absolute byte offset the error refers to, when it refers to one.
    pub fn offset(&self) -> Option<u64> {
        use FormatError::*;
        match self {
            Truncated { offset, .. }
            | SectionChecksum { offset, .. }
            | SectionBounds { offset, .. }
            | SectionMisaligned { offset, .. }
            | SectionOverlap { offset, .. }
            | ReservedNonZero { offset, .. }
            | TrailingBytes { offset, .. }
            | LimitExceeded { offset, .. }
            | InvalidUtf8 { offset, .. }
            | EmptyName { offset, .. }
            | DuplicateName { offset, .. }
            | UnknownCode { offset, .. }
            | BadValue { offset, .. }
            | Tensor { offset, .. }
            | TensorChecksum { offset, .. }
            | Graph { offset, .. } => Some(*offset),
            BadMagic { .. } => Some(0),
            UnsupportedVersion { .. } => Some(8),
            WrongByteOrder { .. } | BadByteOrderMark { .. } => Some(12),
            BadHeaderSize { .. } => Some(16),
            BadAlignment { .. } => Some(20),
            FileLength { .. } => Some(24),
            HeaderChecksum { .. } => Some(124),
            View { .. } | Io { .. } => None,
        }
    }

    pub(crate) fn io(path: &std::path::Path, e: &std::io::Error) -> Self {
        FormatError::Io { path: path.to_path_buf(), kind: e.kind(), message: e.to_string() }
    }
}

/// What is wrong with a tensor-table entry.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorProblem {
    /// The element count times the element size overflows.
    #[error("shape {shape:?} overflows")]
    ShapeOverflow {
        /// The shape.
        shape: Vec<u64>,
    },
    /// The stored length differs from dtype × shape.
    #[error("length {length} does not match {dtype} {shape:?} ({expected} bytes)")]
    LengthMismatch {
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
        /// Stored length.
        length: u64,
        /// Length implied by dtype and shape.
        expected: u64,
    },
    /// The data offset is not a multiple of the file's alignment.
    #[error("data offset {offset} is not a multiple of the alignment {align}")]
    Misaligned {
        /// Offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        align: u64,
    },
    /// The data lies outside the data section.
    #[error("data [{offset}, {offset}+{length}) lies outside the data section of {data_length} bytes")]
    OutOfBounds {
        /// Offset relative to the data section.
        offset: u64,
        /// Length.
        length: u64,
        /// Length of the data section.
        data_length: u64,
    },
    /// The data overlaps another tensor's data.
    #[error("data overlaps tensor {other} {other_name:?} at data offset {at}")]
    Overlap {
        /// Index of the other tensor.
        other: u32,
        /// Its name.
        other_name: String,
        /// First overlapping byte, relative to the data section.
        at: u64,
    },
}

/// What is wrong with the graph.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphProblem {
    /// A value id is not below the graph's value count.
    #[error("value {value} does not exist (the graph has {num_values} values)")]
    ValueOutOfRange {
        /// The id.
        value: u32,
        /// The graph's value count.
        num_values: u32,
    },
    /// A value is read before any input or earlier node defines it.
    #[error("input value {value} is used before it is defined")]
    UseBeforeDefinition {
        /// The id.
        value: u32,
    },
    /// A value is defined twice.
    #[error("value {value} is defined twice")]
    RedefinedValue {
        /// The id.
        value: u32,
    },
    /// A value is never defined.
    #[error("value {value} is never defined")]
    UndefinedValue {
        /// The id.
        value: u32,
    },
    /// A tensor reference is not below the tensor count.
    #[error("{role} refers to tensor {tensor}, but the file has {count} tensors")]
    TensorOutOfRange {
        /// Which operand.
        role: &'static str,
        /// The reference.
        tensor: u32,
        /// Tensor count.
        count: u32,
    },
    /// A referenced tensor has the wrong dtype.
    #[error("{role} tensor {tensor} has dtype {found}, expected {expected}")]
    TensorDType {
        /// Which operand.
        role: &'static str,
        /// The reference.
        tensor: u32,
        /// Its dtype.
        found: DType,
        /// What is allowed.
        expected: &'static str,
    },
    /// A referenced tensor has the wrong shape.
    #[error("{role} tensor {tensor} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// Which operand.
        role: &'static str,
        /// The reference.
        tensor: u32,
        /// Its shape.
        found: Vec<u64>,
        /// The shape implied by the attributes.
        expected: Vec<u64>,
    },
    /// Wrong number of inputs for the op.
    #[error("{op} takes {expected} inputs, found {found}")]
    Arity {
        /// Op name.
        op: &'static str,
        /// What the op takes.
        expected: &'static str,
        /// Inputs given.
        found: usize,
    },
    /// An attribute is out of range.
    #[error("{op} attribute {attr} = {value} is invalid: {reason}")]
    BadAttribute {
        /// Op name.
        op: &'static str,
        /// Attribute name.
        attr: &'static str,
        /// Its value, printed.
        value: String,
        /// What is required.
        reason: &'static str,
    },
    /// A quantization record is malformed or attached to the wrong op.
    #[error("quantization record: {0}")]
    Quant(String),
    /// A node's unit id is out of range.
    #[error("unit {unit} does not exist (the graph has {count} units)")]
    UnitOutOfRange {
        /// The unit id.
        unit: u32,
        /// Unit count.
        count: u32,
    },
    /// Unit ids do not follow forward order.
    #[error("unit {unit} follows unit {previous}: units must appear in forward order")]
    UnitOrder {
        /// This node's unit.
        unit: u32,
        /// The unit of an earlier node.
        previous: u32,
    },
    /// Problems with the graph inputs and outputs.
    #[error("{0}")]
    Interface(String),
}
