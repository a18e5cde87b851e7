#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod codec;
mod dtype;
mod error;
mod file;
pub mod graph;
mod header;
pub mod limits;
pub mod metadata;
mod tensor;
mod writer;

pub use dtype::DType;
pub use error::{FormatError, GraphProblem, Section, TensorProblem};
pub use file::{MappedModel, ModelFile};
pub use graph::Graph;
pub use header::{
    BYTE_ORDER_MARK, DEFAULT_ALIGNMENT, HEADER_SIZE, Header, MAGIC, SECTION_ALIGN, SectionInfo, VERSION_MAJOR,
    VERSION_MINOR,
};
pub use metadata::{MetaArray, MetaValue, Metadata};
pub use tensor::{TensorView, numel};
pub use writer::{FileBuilder, WriteError, write_file_atomic};

/// Re-exported so users can name the container of a [`MappedModel`].
pub use memmap2;
