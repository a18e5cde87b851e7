#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod calib;
pub mod conv_op;
pub mod error;
pub mod fq;
pub mod grid;
pub mod import;
pub mod io;
pub mod net;
pub mod norm_op;
pub mod pipeline;
pub mod quant;
pub mod train;

pub use error::{QuantError, Result};
