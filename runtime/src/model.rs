//! A model opened for execution: a validated `.edq` file (memory-mapped, or in memory) and
//! what the runtime derives from its metadata.

use std::path::Path;

use edadm_format::graph::{GraphOutput, InputKind, InputKindTag, Prediction};
use edadm_format::metadata::keys;
use edadm_format::{Graph, Metadata, ModelFile};

use crate::error::{Result, RuntimeError};
use crate::sampler::Schedule;

/// The bytes of a model file: a read-only memory map, or a buffer.
#[derive(Debug)]
pub enum ModelBytes {
    /// A memory-mapped file; weights are read in place.
    Mapped(edadm_format::memmap2::Mmap),
    /// Bytes in memory (e.g. a model just built by an importer).
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for ModelBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            ModelBytes::Mapped(m) => m,
            ModelBytes::Owned(v) => v,
        }
    }
}

/// A parsed, validated model.
#[derive(Debug)]
pub struct Model {
    file: ModelFile<ModelBytes>,
    sample: [usize; 3],
}

impl Model {
    /// Memory-maps and validates the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        let f = edadm_format::MappedModel::open(path)?;
        let bytes = ModelBytes::Mapped(f.into_inner());
        Model::from_model_bytes(bytes)
    }

    /// Validates a model held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Model> {
        Model::from_model_bytes(ModelBytes::Owned(bytes))
    }

    /// Validates the structure, then every tensor's checksum and the data section's zero
    /// padding: one CRC-32 pass over the file at open (the planner reads every weight once
    /// anyway), so that a damaged weight is an error, never an image.
    fn from_model_bytes(bytes: ModelBytes) -> Result<Model> {
        let file = ModelFile::from_bytes(bytes)?;
        file.verify()?;
        let sample = match file.graph().input(InputKindTag::Sample).map(|i| i.kind) {
            Some(InputKind::Sample { channels, height, width }) => [channels as usize, height as usize, width as usize],
            _ => return Err(RuntimeError::Session("the graph has no sample input".into())),
        };
        if file.graph().outputs.len() != 1 {
            return Err(RuntimeError::Unsupported {
                node: "<graph>".into(),
                what: format!("a graph with {} outputs (one prediction expected)", file.graph().outputs.len()),
            });
        }
        Ok(Model { file, sample })
    }

    /// Gives the resident pages of a mapped tensor back to the page cache (`MADV_DONTNEED`):
    /// for weights that planning has copied into a packed layout, so that the process does not
    /// hold both. The mapping stays valid: a later read faults the same bytes back in from the
    /// file. No effect on models held in memory or off Unix.
    pub(crate) fn release_pages(&self, t: edadm_format::graph::TensorId) {
        #[cfg(unix)]
        if let (ModelBytes::Mapped(m), Some(v)) = (self.file.source(), self.file.tensor(t)) {
            let offset = v.data.as_ptr() as usize - m.as_ptr() as usize;
            // SAFETY: the map is a read-only mapping of a file that is not written while mapped
            // (an .edq is replaced atomically, never modified in place); DONTNEED on it only
            // drops page-table entries, and every later access reads the unchanged file bytes
            // again, so no reference into it observes a change.
            let _ = unsafe {
                m.unchecked_advise_range(edadm_format::memmap2::UncheckedAdvice::DontNeed, offset, v.data.len())
            };
        }
        #[cfg(not(unix))]
        let _ = t;
    }

    /// The parsed file.
    pub fn file(&self) -> &ModelFile<ModelBytes> {
        &self.file
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        self.file.graph()
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        self.file.metadata()
    }

    /// `[channels, height, width]` of the sample input at the model's native size.
    pub fn sample_shape(&self) -> [usize; 3] {
        self.sample
    }

    /// The graph's output.
    pub fn output(&self) -> GraphOutput {
        self.file.graph().outputs[0]
    }

    /// What the network predicts.
    pub fn prediction(&self) -> Prediction {
        self.output().prediction
    }

    /// The training noise schedule from the metadata (`schedule.betas`).
    pub fn schedule(&self) -> Result<Schedule> {
        let betas = self
            .metadata()
            .get_f64_array(keys::SCHEDULE_BETAS)
            .ok_or_else(|| RuntimeError::Sampler("the model has no schedule.betas metadata".into()))?;
        Schedule::from_betas(betas)
    }

    /// The data range `[lo, hi]` of the model's samples: its `model.data_range` (validated as
    /// finite with lo < hi when the file was opened), else `[-1, 1]`.
    pub fn data_range(&self) -> [f32; 2] {
        match self.metadata().get_f64_array(keys::MODEL_DATA_RANGE) {
            Some([lo, hi]) if hi > lo => [*lo as f32, *hi as f32],
            _ => [-1.0, 1.0],
        }
    }

    /// Whether any node is quantized.
    pub fn is_quantized(&self) -> bool {
        self.graph().nodes.iter().any(|n| n.quant.is_some())
    }
}
