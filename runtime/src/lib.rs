#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod arena;
pub mod bench;
mod error;
mod model;
mod plan;
pub mod sampler;
mod session;

pub use error::{Result, RuntimeError};
pub use model::{Model, ModelBytes};
pub use session::{MemoryReport, Session, SessionOptions, StepInfo};
