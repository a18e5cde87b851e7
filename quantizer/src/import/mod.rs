//! Importers: a checkpoint (and its configuration) in, a graph plus f32/f16 weights out, ready
//! to be written as an `.edq` file. Families:
//! - [`ddpm`]: the Ho et al. UNet with pytorch_diffusion / ddim-repository key names;
//! - [`diffusers`]: the same architecture from a diffusers `UNet2DModel` folder;
//! - [`mnist_unet`]: the small MNIST UNet of `shared/models/mnist-unet`.

pub mod builder;
pub mod checkpoint;
pub mod config;
pub mod ddpm;
pub mod diffusers;
pub mod mnist_unet;

use std::path::{Path, PathBuf};

use edadm_format::{FileBuilder, FormatError, WriteError};

pub use builder::WeightDType;
pub use checkpoint::Checkpoint;

/// Everything that can go wrong while importing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A file could not be read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        message: String,
    },
    /// The checkpoint cannot be read or is not what the family expects.
    #[error("{origin}: {detail}")]
    Checkpoint {
        /// The checkpoint.
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("{origin}: missing key {key:?}")]
    Missing {
        /// The key.
        key: String,
        /// The checkpoint.
        origin: String,
    },
    /// A tensor has the wrong shape.
    #[error("key {key:?} has shape {found:?}, the configuration implies {expected:?}")]
    Shape {
        /// The key.
        key: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape in the checkpoint.
        found: Vec<usize>,
    },
    /// Tensors the architecture does not use: the checkpoint and the configuration disagree.
    #[error("{origin}: unexpected key{} {}", if keys.len() == 1 { "" } else { "s" }, list_keys(keys))]
    Unexpected {
        /// The keys.
        keys: Vec<String>,
        /// The checkpoint.
        origin: String,
    },
    /// The configuration is invalid or unsupported.
    #[error("{origin}: {detail}")]
    Config {
        /// The configuration (file or preset).
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// The assembled model is invalid (a bug in the importer).
    #[error(transparent)]
    Format(Box<FormatError>),
    /// Writing the output failed.
    #[error(transparent)]
    Write(Box<WriteError>),
}

impl From<FormatError> for ImportError {
    fn from(e: FormatError) -> Self {
        ImportError::Format(Box::new(e))
    }
}

impl From<WriteError> for ImportError {
    fn from(e: WriteError) -> Self {
        ImportError::Write(Box::new(e))
    }
}

fn list_keys(keys: &[String]) -> String {
    let shown: Vec<String> = keys.iter().take(5).map(|k| format!("{k:?}")).collect();
    let more = if keys.len() > 5 { format!(" and {} more", keys.len() - 5) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

impl ImportError {
    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        ImportError::Io { path: path.to_path_buf(), message: e.to_string() }
    }
}

/// A model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// pytorch_diffusion / ddim-repository DDPM UNet.
    Ddpm,
    /// diffusers `UNet2DModel` folder.
    Diffusers,
    /// The shared MNIST UNet.
    MnistUnet,
}

impl Family {
    /// Parses `ddpm`, `diffusers`, `mnist-unet`.
    pub fn from_name(s: &str) -> Option<Family> {
        Some(match s {
            "ddpm" => Family::Ddpm,
            "diffusers" => Family::Diffusers,
            "mnist-unet" => Family::MnistUnet,
            _ => return None,
        })
    }
}

/// Import settings.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// A configuration file (ddpm: ddim-repository JSON or YAML; diffusers: a scheduler config).
    pub config: Option<PathBuf>,
    /// A built-in configuration (ddpm: `cifar10`, `fmnist-ddpm`).
    pub preset: Option<String>,
    /// The checkpoint prefix holding the model (`state_dict`, `ema`, ...), when it holds several.
    pub key: Option<String>,
    /// Storage type of the weight matrices.
    pub f16: bool,
    /// Build the architecture with random weights from this seed instead of reading the
    /// checkpoint (ddpm and mnist-unet; for speed and memory benchmarks).
    pub random: Option<u64>,
}

/// An imported model, ready to write, and remarks for the user.
#[derive(Debug)]
pub struct Imported {
    /// The model.
    pub file: FileBuilder<'static>,
    /// Things the user should know (defaults that were assumed, ...).
    pub notes: Vec<String>,
}

/// The checkpoint's model (under `--key`, else found from `anchor`), or random weights.
fn open_or_random(checkpoint: &Path, opts: &ImportOptions, anchor: &str) -> Result<Checkpoint, ImportError> {
    if let Some(seed) = opts.random {
        return Ok(Checkpoint::random(seed));
    }
    let mut ckpt = Checkpoint::open(checkpoint)?;
    ckpt.select_model(opts.key.as_deref(), anchor)?;
    Ok(ckpt)
}

/// Imports `checkpoint` as `family` (ignored with [`ImportOptions::random`]).
pub fn import(family: Family, checkpoint: &Path, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let dtype = if opts.f16 { WeightDType::F16 } else { WeightDType::F32 };
    match family {
        Family::Ddpm => {
            let cfg = match (&opts.config, &opts.preset) {
                (Some(path), _) => ddpm::DdpmConfig::from_file(path)?,
                (None, Some(p)) => ddpm::DdpmConfig::preset(p)?,
                (None, None) => {
                    return Err(ImportError::Config {
                        origin: "ddpm".into(),
                        detail: format!(
                            "the ddpm family needs --config FILE or --preset NAME (presets: {})",
                            ddpm::PRESETS.join(", ")
                        ),
                    });
                }
            };
            let mut ckpt = open_or_random(checkpoint, opts, "conv_in.weight")?;
            Ok(Imported { file: ddpm::build(&mut ckpt, &cfg, &ddpm::DdpmNames, dtype)?, notes: Vec::new() })
        }
        Family::Diffusers if opts.random.is_some() => Err(ImportError::Config {
            origin: "diffusers".into(),
            detail: "random weights need an architecture preset (families ddpm, mnist-unet)".into(),
        }),
        Family::Diffusers => diffusers::import(checkpoint, opts, dtype),
        Family::MnistUnet => {
            let mut ckpt = open_or_random(checkpoint, opts, "pe.embedding.weight")?;
            Ok(Imported { file: mnist_unet::build(&mut ckpt, dtype)?, notes: Vec::new() })
        }
    }
}
