//! Reading checkpoints: `.safetensors`, and PyTorch `.ckpt`/`.pth`/`.pt`/`.bin` (zip, legacy
//! and tar containers, flat or nested `state_dict`) into f32 tensors, without executing pickle
//! code. Every key a family builder takes is recorded, so leftover keys can be reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ImportError;

/// One tensor, converted to f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements.
    pub data: Vec<f32>,
}

/// Where a tensor's values come from: read and converted to f32 only when a family builder
/// takes it, so that keys the family does not need (an EMA copy, optimiser state) cost nothing.
#[derive(Clone)]
enum Source {
    /// Already f32 (tests, converters).
    Loaded(Vec<f32>),
    /// A PyTorch storage view, read on demand.
    Torch(pytorch_reader::Tensor, &'static str),
    /// Bytes `[start, end)` of a safetensors file held once for all its tensors.
    Mapped(std::sync::Arc<Vec<u8>>, std::ops::Range<usize>, &'static str),
}

#[derive(Clone)]
struct Entry {
    shape: Vec<usize>,
    source: Source,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({:?})", self.shape)
    }
}

/// The tensors of a checkpoint, keyed by name, with the keys taken so far.
#[derive(Debug, Default)]
pub struct Checkpoint {
    tensors: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    /// Where the tensors came from, for messages.
    pub source: String,
    /// SHA-256 of the checkpoint file (lower-case hex), when read from a file.
    pub sha256: Option<String>,
    /// Synthesize every requested tensor from this seed instead (random weights of the right
    /// shapes, for speed and memory benchmarks of architectures without a checkpoint at hand).
    random: Option<u64>,
}

fn sha256_file(path: &Path) -> Result<String, ImportError> {
    let mut f = std::fs::File::open(path).map_err(|e| ImportError::io(path, &e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| ImportError::io(path, &e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Largest pickle (`data.pkl`, uncompressed) accepted from a ZIP checkpoint: real state dicts
/// need well under 1 MiB of pickle for thousands of tensors, while a few KiB of deflated pickle
/// can expand to millions of opcodes, each an object in memory (pytorch-reader itself allows
/// 100 MiB).
pub const MAX_ZIP_PICKLE_BYTES: u64 = 16 << 20;

/// Refuses a ZIP checkpoint whose `data.pkl` declares more than [`MAX_ZIP_PICKLE_BYTES`]
/// uncompressed, before the pickle is read. Other containers' pickles are read off the file, so
/// the file's size bounds them.
fn check_zip_pickle(path: &Path, source: &str) -> Result<(), ImportError> {
    let mut f = std::fs::File::open(path).map_err(|e| ImportError::io(path, &e))?;
    let mut magic = [0u8; 4];
    if std::io::Read::read_exact(&mut f, &mut magic).is_err() || magic != *b"PK\x03\x04" {
        return Ok(());
    }
    let Ok(mut zip) = zip::ZipArchive::new(f) else { return Ok(()) }; // the reader names the problem
    for i in 0..zip.len() {
        let Some(Ok(name)) = zip.name_for_index(i).map(|n| n.map(|n| n.to_string())) else { continue };
        if !name.ends_with("data.pkl") {
            continue;
        }
        let Ok(size) = zip.by_index_raw(i).map(|e| e.size()) else { continue };
        if size > MAX_ZIP_PICKLE_BYTES {
            return Err(ImportError::Checkpoint {
                origin: source.into(),
                detail: format!(
                    "its pickle {name:?} declares {size} bytes uncompressed, above the {MAX_ZIP_PICKLE_BYTES}-byte limit"
                ),
            });
        }
    }
    Ok(())
}

/// A tensor's values as f32, read from wherever they are.
fn read(src: &Source, key: &str, origin: &str) -> Result<Vec<f32>, ImportError> {
    match src {
        Source::Loaded(v) => Ok(v.clone()),
        Source::Mapped(map, range, dtype) => to_f32(&map[range.clone()], dtype, key, origin),
        Source::Torch(t, dtype) => {
            // pytorch-reader returns native-endian bytes (little-endian hosts only, checked at open).
            let bytes = t.read().map_err(|e| ImportError::Checkpoint {
                origin: origin.into(),
                detail: format!("cannot read tensor {key:?}: {e}"),
            })?;
            to_f32(&bytes, dtype, key, origin)
        }
    }
}

fn to_f32(bytes: &[u8], dtype: &str, key: &str, source: &str) -> Result<Vec<f32>, ImportError> {
    Ok(match dtype {
        "f32" => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        "f16" => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        "bf16" => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        "f64" => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
        other => {
            return Err(ImportError::Checkpoint {
                origin: source.into(),
                detail: format!("tensor {key:?} has dtype {other}; only floating-point parameters can be imported"),
            });
        }
    })
}

impl Checkpoint {
    /// Reads a checkpoint file, chosen by extension.
    pub fn open(path: &Path) -> Result<Checkpoint, ImportError> {
        let source = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| ImportError::io(path, &e))?;
        if meta.is_dir() {
            return Err(ImportError::Checkpoint {
                origin: source,
                detail: "is a directory (use --family diffusers for a diffusers model folder)".into(),
            });
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let tensors = match ext.as_str() {
            "safetensors" => Self::read_safetensors(path, &source)?,
            "ckpt" | "pth" | "pt" | "bin" => Self::read_torch(path, &source)?,
            _ => {
                return Err(ImportError::Checkpoint {
                    origin: source,
                    detail: "unknown checkpoint type: expected .safetensors, .ckpt, .pth, .pt or .bin".into(),
                });
            }
        };
        Ok(Checkpoint { tensors, taken: BTreeSet::new(), sha256: Some(sha256_file(path)?), source, random: None })
    }

    fn read_safetensors(path: &Path, source: &str) -> Result<BTreeMap<String, Entry>, ImportError> {
        let map = std::sync::Arc::new(std::fs::read(path).map_err(|e| ImportError::io(path, &e))?);
        let st = safetensors::SafeTensors::deserialize(&map[..]).map_err(|e| ImportError::Checkpoint {
            origin: source.into(),
            detail: format!("not a valid safetensors file: {e}"),
        })?;
        let base = map.as_ptr() as usize;
        let mut out = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => "f32",
                safetensors::Dtype::F16 => "f16",
                safetensors::Dtype::BF16 => "bf16",
                safetensors::Dtype::F64 => "f64",
                // Integer buffers (step counters and the like) are not parameters.
                _ => continue,
            };
            let start = view.data().as_ptr() as usize - base;
            let range = start..start + view.data().len();
            out.insert(name, Entry { shape: view.shape().to_vec(), source: Source::Mapped(map.clone(), range, dtype) });
        }
        Ok(out)
    }

    fn read_torch(path: &Path, source: &str) -> Result<BTreeMap<String, Entry>, ImportError> {
        let refuse = |detail: String| ImportError::Checkpoint { origin: source.into(), detail };
        check_zip_pickle(path, source)?;
        let reader = pytorch_reader::PytorchReader::new(path)
            .map_err(|e| refuse(format!("cannot read PyTorch checkpoint: {e}")))?;
        // Budgets before any tensor is read: a view cannot materialise more bytes than the file
        // holds (a stride-0 `expand` can declare any size over a few stored bytes), and all
        // float tensors together, as f32, must fit the memory limit.
        let file_len = std::fs::metadata(path).map_err(|e| ImportError::io(path, &e))?.len();
        let mut total: u64 = 0;
        for (name, t) in reader.tensors() {
            use pytorch_reader::DType as D;
            if !matches!(t.dtype(), D::F32 | D::F16 | D::BF16 | D::F64) {
                continue;
            }
            let n = t.shape().iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let stored = n.and_then(|n| n.checked_mul(t.dtype().size() as u64));
            if stored.is_none_or(|b| b > file_len) {
                return Err(refuse(format!(
                    "tensor {name:?} of shape {:?} would materialise more bytes than the {file_len}-byte file \
                     holds (a view with a zero or overlapping stride)",
                    t.shape()
                )));
            }
            total = total.saturating_add(n.unwrap_or(u64::MAX).saturating_mul(4));
        }
        let limit = edadm_runtime::default_memory_limit() as u64;
        if total > limit {
            return Err(refuse(format!(
                "its float tensors need {} as f32, above the memory limit of {}",
                edadm_runtime::human_bytes(total as usize),
                edadm_runtime::human_bytes(limit as usize)
            )));
        }
        if cfg!(target_endian = "big") {
            return Err(refuse("big-endian hosts are not supported".into()));
        }
        let mut out = BTreeMap::new();
        for (name, t) in reader.into_tensors() {
            use pytorch_reader::DType as D;
            let dtype = match t.dtype() {
                D::F32 => "f32",
                D::F16 => "f16",
                D::BF16 => "bf16",
                D::F64 => "f64",
                _ => continue, // integer buffers (num_batches_tracked, step counters)
            };
            out.insert(name, Entry { shape: t.shape().to_vec(), source: Source::Torch(t, dtype) });
        }
        Ok(out)
    }

    /// A checkpoint from tensors in memory (tests, converters).
    pub fn from_tensors(source: &str, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Checkpoint {
        Checkpoint {
            tensors: tensors
                .into_iter()
                .map(|(k, t)| (k, Entry { shape: t.shape, source: Source::Loaded(t.data) }))
                .collect(),
            taken: BTreeSet::new(),
            source: source.into(),
            sha256: None,
            random: None,
        }
    }

    /// A checkpoint that answers every request with random parameters of the requested shape,
    /// drawn from `seed` and the key: weights (rank ≥ 2) ~ N(0, 1/fan_in), norm scales 1, other
    /// vectors (biases, norm shifts) ~ N(0, 0.02²). The model it builds computes nothing useful;
    /// it has the real architecture's shapes and value ranges of the right order, which is what
    /// speed and memory measurements need.
    pub fn random(seed: u64) -> Checkpoint {
        Checkpoint { source: format!("random weights (seed {seed})"), random: Some(seed), ..Checkpoint::default() }
    }

    fn synthesize(seed: u64, key: &str, shape: &[usize]) -> Tensor {
        // FNV-1a of the key, mixed with the seed: every tensor its own stream.
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut rng = crate::calib::rng::Rng::new(seed ^ h);
        let n: usize = shape.iter().product();
        let data = if shape.len() >= 2 {
            let fan_in: usize = shape[1..].iter().product();
            let sd = (1.0 / fan_in.max(1) as f64).sqrt();
            (0..n).map(|_| (rng.normal() * sd) as f32).collect()
        } else if key.ends_with(".weight") || key.ends_with(".gamma") {
            vec![1.0; n]
        } else {
            (0..n).map(|_| (rng.normal() * 0.02) as f32).collect()
        };
        Tensor { shape: shape.to_vec(), data }
    }

    /// All tensors, read and converted, consuming the checkpoint.
    pub fn into_tensors(self) -> Result<BTreeMap<String, Tensor>, ImportError> {
        let source = self.source.clone();
        self.tensors
            .into_iter()
            .map(|(k, e)| {
                let data = read(&e.source, &k, &source)?;
                Ok((k, Tensor { shape: e.shape, data }))
            })
            .collect()
    }

    /// Keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Keeps only the model stored under a prefix and strips it. The prefix is `key` if given
    /// (e.g. `state_dict`, `ema`, `4.module`), else found from `anchor` (a key every checkpoint of
    /// the family has, e.g. `conv_in.weight`): nested `state_dict`s, `module.` wrappers of
    /// DataParallel and list-wrapped states are recognised; several models are an error that
    /// names them.
    pub fn select_model(&mut self, key: Option<&str>, anchor: &str) -> Result<(), ImportError> {
        let prefix = match key {
            Some(k) => {
                let p = format!("{}.", k.trim_end_matches('.'));
                if !self.tensors.contains_key(&format!("{p}{anchor}")) {
                    return Err(ImportError::Checkpoint {
                        origin: self.source.clone(),
                        detail: format!("no tensor {p}{anchor}: --key {k:?} does not hold the model"),
                    });
                }
                p
            }
            None => {
                let suffix = format!(".{anchor}");
                let mut found: Vec<String> = self
                    .tensors
                    .keys()
                    .filter_map(|k| {
                        if k == anchor { Some(String::new()) } else { k.strip_suffix(&suffix).map(|p| format!("{p}.")) }
                    })
                    .collect();
                found.sort();
                match found.len() {
                    0 => {
                        return Err(ImportError::Missing { key: anchor.into(), origin: self.source.clone() });
                    }
                    1 => found.remove(0),
                    _ => {
                        let list: Vec<String> =
                            found.iter().map(|p| format!("{:?}", p.trim_end_matches('.'))).collect();
                        return Err(ImportError::Checkpoint {
                            origin: self.source.clone(),
                            detail: format!(
                                "it holds several models (under {}); choose one with --key",
                                list.join(", ")
                            ),
                        });
                    }
                }
            }
        };
        if !prefix.is_empty() {
            let all = std::mem::take(&mut self.tensors);
            self.tensors =
                all.into_iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|s| (s.to_string(), v))).collect();
        }
        Ok(())
    }

    /// Whether `key` exists (not yet taken).
    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key) && !self.taken.contains(key)
    }

    /// The shape of `key`, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    /// Takes `key`, checking its shape (`expected` may list fewer dimensions when trailing
    /// ones of size 1 are allowed to differ — see [`Checkpoint::take_reshaped`]).
    pub fn take(&mut self, key: &str, expected: &[usize]) -> Result<Tensor, ImportError> {
        if let Some(seed) = self.random {
            return Ok(Self::synthesize(seed, key, expected));
        }
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| ImportError::Missing { key: key.into(), origin: self.source.clone() })?;
        if t.shape != expected {
            return Err(ImportError::Shape { key: key.into(), expected: expected.to_vec(), found: t.shape.clone() });
        }
        let data = read(&t.source, key, &self.source)?;
        self.taken.insert(key.to_string());
        Ok(Tensor { shape: t.shape.clone(), data })
    }

    /// Takes `key` whose element count must match `shape` and whose shape must be `shape` or one
    /// of `alternatives` (a Linear `[o, i]` used as a 1×1 conv `[o, i, 1, 1]`, say); returns it
    /// with `shape`.
    pub fn take_reshaped(
        &mut self,
        key: &str,
        shape: &[usize],
        alternatives: &[&[usize]],
    ) -> Result<Tensor, ImportError> {
        if let Some(seed) = self.random {
            return Ok(Self::synthesize(seed, key, shape));
        }
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| ImportError::Missing { key: key.into(), origin: self.source.clone() })?;
        if t.shape != shape && !alternatives.iter().any(|a| t.shape == *a) {
            return Err(ImportError::Shape { key: key.into(), expected: shape.to_vec(), found: t.shape.clone() });
        }
        let data = read(&t.source, key, &self.source)?;
        self.taken.insert(key.to_string());
        Ok(Tensor { shape: shape.to_vec(), data })
    }

    /// Keys present but never taken.
    pub fn unused(&self) -> Vec<&str> {
        self.tensors.keys().filter(|k| !self.taken.contains(*k)).map(String::as_str).collect()
    }
}
