//! Caps on every count and length a reader accepts (`docs/FORMAT.md` §8). They bound the
//! work and memory a hostile file can cause; real models stay far below them.

/// The "no reference" sentinel for optional tensor, unit and value references.
pub const NONE: u32 = u32::MAX;

/// Largest metadata, graph or tensor-table section, in bytes.
pub const MAX_SECTION_BYTES: u64 = 256 << 20;
/// Largest alignment a file may declare.
pub const MAX_ALIGNMENT: u32 = 1 << 20;
/// Smallest alignment a file may declare.
pub const MIN_ALIGNMENT: u32 = 64;

/// Metadata entries.
pub const MAX_META_ENTRIES: u64 = 1 << 16;
/// Bytes in a metadata key.
pub const MAX_META_KEY_BYTES: u64 = 256;
/// Bytes in a metadata string value (also each string inside an array).
pub const MAX_META_STRING_BYTES: u64 = 16 << 20;
/// Elements in a metadata array.
pub const MAX_META_ARRAY_LEN: u64 = 1 << 24;
/// Strings in a metadata string array: an empty string costs 4 bytes of file and a heap string
/// in memory, so the number array bound would let a 64 MiB file claim ~400 MB.
pub const MAX_META_STR_ARRAY_LEN: u64 = 1 << 16;

/// Tensors in the tensor table.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Bytes in a tensor, node or unit name.
pub const MAX_NAME_BYTES: u64 = 1024;
/// Dimensions of a tensor.
pub const MAX_RANK: u64 = 8;

/// Values of a graph.
pub const MAX_VALUES: u64 = 1 << 22;
/// Nodes of a graph.
pub const MAX_NODES: u64 = 1 << 20;
/// Reconstruction units of a graph.
pub const MAX_UNITS: u64 = 1 << 20;
/// Graph inputs and graph outputs (each).
pub const MAX_GRAPH_IO: u64 = 16;
/// Inputs of one node.
pub const MAX_NODE_INPUTS: u64 = 256;
/// Bytes of one node's attribute record or quantization record.
pub const MAX_RECORD_BYTES: u64 = 4096;
/// Input-channel groups of one weight quantization record (2 for the split skip conv).
pub const MAX_QUANT_GROUPS: u64 = 8;
/// Time-step groups of the activation quantizers (one per sampler step of a 1000-step schedule
/// fits).
pub const MAX_STEP_GROUPS: u64 = 1024;
