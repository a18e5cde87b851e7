//! Writing a file: lay everything out first, validate it with the reader's rules, then stream it
//! to a temporary file in the target directory, sync, and rename it into place.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dtype::DType;
use crate::error::{FormatError, TensorProblem};
use crate::graph::{Graph, TensorId, TensorMeta, encode_graph, validate_graph};
use crate::header::{DEFAULT_ALIGNMENT, HEADER_SIZE, Header, SECTION_ALIGN, SectionInfo, VERSION_MAJOR, VERSION_MINOR};
use crate::limits;
use crate::metadata::{Metadata, encode_metadata};
use crate::tensor::{TensorRecord, encode_tensor_table, numel, validate_tensor_table};

/// Errors of [`FileBuilder::write_atomic`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The model is not valid; nothing was written.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Writing failed; no file was left under the final name.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path being written (the temporary file, the target, or its directory).
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct PendingTensor<'d> {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    data: Cow<'d, [u8]>,
    crc32: u32,
}

/// Assembles a model (metadata, graph, tensors) and writes it as one `.edq` file.
///
/// Tensor data may be borrowed (`'d`) to avoid copies of large weights.
#[derive(Debug)]
pub struct FileBuilder<'d> {
    alignment: u32,
    metadata: Metadata,
    graph: Graph,
    tensors: Vec<PendingTensor<'d>>,
    names: HashSet<String>,
}

impl Default for FileBuilder<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Where everything goes, computed before a byte is written.
struct Layout {
    header: [u8; HEADER_SIZE as usize],
    sections: [(u64, Vec<u8>); 3],
    data_offset: u64,
    /// Data offsets relative to the data section.
    tensor_offsets: Vec<u64>,
    file_length: u64,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Zero bytes for padding.
static ZEROS: [u8; 4096] = [0; 4096];

impl<'d> FileBuilder<'d> {
    /// An empty model with the default alignment (64).
    pub fn new() -> Self {
        FileBuilder {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Metadata::new(),
            graph: Graph::default(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Sets the tensor-data alignment: a power of two from 64 to 1 MiB (4096 lets a runtime
    /// map tensors page by page).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), FormatError> {
        if !alignment.is_power_of_two() || !(limits::MIN_ALIGNMENT..=limits::MAX_ALIGNMENT).contains(&alignment) {
            return Err(FormatError::BadAlignment {
                found: alignment,
                min: limits::MIN_ALIGNMENT,
                max: limits::MAX_ALIGNMENT,
            });
        }
        self.alignment = alignment;
        Ok(())
    }

    /// The metadata, for editing (the crate README's example).
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Replaces the metadata.
    pub fn set_metadata(&mut self, metadata: Metadata) {
        self.metadata = metadata;
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The graph, for editing.
    pub fn graph_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }

    /// Replaces the graph.
    pub fn set_graph(&mut self, graph: Graph) {
        self.graph = graph;
    }

    /// Number of tensors added so far.
    pub fn num_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Adds a tensor given as little-endian bytes; returns its id for graph references.
    /// Checks at once that the name is new and that the length matches dtype × shape.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[u64],
        data: impl Into<Cow<'d, [u8]>>,
    ) -> Result<TensorId, FormatError> {
        let name = name.into();
        let data = data.into();
        let index = self.tensors.len() as u32;
        let problem = |problem| FormatError::Tensor { index, name: name.clone(), offset: 0, problem };
        if name.is_empty() {
            return Err(FormatError::EmptyName { what: "tensor name", offset: 0 });
        }
        if self.names.contains(&name) {
            return Err(FormatError::DuplicateName { what: "tensor name", name, offset: 0 });
        }
        if shape.len() as u64 > limits::MAX_RANK {
            return Err(FormatError::LimitExceeded {
                what: "tensor rank",
                offset: 0,
                value: shape.len() as u64,
                limit: limits::MAX_RANK,
            });
        }
        let expected = numel(shape)
            .and_then(|n| dtype.storage_bytes(n))
            .ok_or_else(|| problem(TensorProblem::ShapeOverflow { shape: shape.to_vec() }))?;
        if expected != data.len() as u64 {
            return Err(problem(TensorProblem::LengthMismatch {
                dtype,
                shape: shape.to_vec(),
                length: data.len() as u64,
                expected,
            }));
        }
        let crc32 = crc32fast::hash(&data);
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor { name, dtype, shape: shape.to_vec(), data, crc32 });
        Ok(TensorId(index))
    }

    /// Adds an `f32` tensor.
    pub fn add_f32(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        data: &'d [f32],
    ) -> Result<TensorId, FormatError> {
        let bytes: Cow<'d, [u8]> = if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(data))
        } else {
            Cow::Owned(data.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        self.add_tensor(name, DType::F32, shape, bytes)
    }

    /// Lays the file out and validates it with the reader's rules.
    fn layout(&self) -> Result<Layout, FormatError> {
        self.metadata.validate(None)?;
        let align = u64::from(self.alignment);
        let mut tensor_offsets = Vec::with_capacity(self.tensors.len());
        let mut pos = 0u64;
        for t in &self.tensors {
            let off = align_up(pos, align);
            tensor_offsets.push(off);
            pos = off + t.data.len() as u64;
        }
        let data_length = pos;
        let records: Vec<TensorRecord<'_>> = self
            .tensors
            .iter()
            .zip(&tensor_offsets)
            .map(|(t, &offset)| TensorRecord {
                name: &t.name,
                dtype: t.dtype,
                shape: &t.shape,
                offset,
                length: t.data.len() as u64,
                crc32: t.crc32,
                entry_offset: 0,
            })
            .collect();
        validate_tensor_table(&records, align, data_length)?;
        let metas: Vec<TensorMeta<'_>> =
            records.iter().map(|r| TensorMeta { dtype: r.dtype, shape: r.shape }).collect();
        validate_graph(&self.graph, &metas, None)?;
        crate::file::check_weight_scales(&self.graph, |id| {
            self.tensors.get(id.0 as usize).map(|t| (t.name.as_str(), &t.data[..], 0))
        })?;

        let bodies = [encode_metadata(&self.metadata), encode_graph(&self.graph), encode_tensor_table(&records)];
        let mut pos = u64::from(HEADER_SIZE);
        let mut infos = [SectionInfo::default(); 3];
        for (info, body) in infos.iter_mut().zip(&bodies) {
            if body.len() as u64 > limits::MAX_SECTION_BYTES {
                return Err(FormatError::LimitExceeded {
                    what: "section length",
                    offset: pos,
                    value: body.len() as u64,
                    limit: limits::MAX_SECTION_BYTES,
                });
            }
            let offset = align_up(pos, SECTION_ALIGN);
            *info = SectionInfo { offset, length: body.len() as u64, crc32: crc32fast::hash(body) };
            pos = info.end();
        }
        let data_offset = align_up(pos, align);
        let file_length = data_offset + data_length;
        let header = Header {
            version_major: VERSION_MAJOR,
            // The lowest minor whose readers can read the file: 2 for 5- to 7-bit weight
            // records, 1 for a time-step table, else 0.
            version_minor: if self.graph.nodes.iter().any(
                |n| matches!(&n.quant, Some(crate::graph::NodeQuant::Weight(w)) if (5..=7).contains(&w.weight_bits)),
            ) {
                VERSION_MINOR
            } else if self.graph.step_groups.is_some() {
                1
            } else {
                0
            },
            alignment: self.alignment,
            file_length,
            metadata: infos[0],
            graph: infos[1],
            tensors: infos[2],
            data_offset,
            data_length,
        };
        header.check_layout()?;
        let [m, g, t] = bodies;
        Ok(Layout {
            header: header.encode(),
            sections: [(infos[0].offset, m), (infos[1].offset, g), (infos[2].offset, t)],
            data_offset,
            tensor_offsets,
            file_length,
        })
    }

    /// Streams the laid-out file through `sink`.
    fn emit(&self, l: &Layout, sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut pos = 0u64;
        let mut put = |sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>, at: u64, bytes: &[u8]| {
            while pos < at {
                let n = (at - pos).min(ZEROS.len() as u64) as usize;
                sink(&ZEROS[..n])?;
                pos += n as u64;
            }
            sink(bytes)?;
            pos += bytes.len() as u64;
            Ok::<(), std::io::Error>(())
        };
        put(sink, 0, &l.header)?;
        for (offset, body) in &l.sections {
            put(sink, *offset, body)?;
        }
        put(sink, l.data_offset, &[])?;
        for (t, off) in self.tensors.iter().zip(&l.tensor_offsets) {
            put(sink, l.data_offset + off, &t.data)?;
        }
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let l = self.layout()?;
        let mut out = Vec::with_capacity(l.file_length as usize);
        self.emit(&l, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .map_err(|e| FormatError::io(Path::new("<memory>"), &e))?;
        Ok(out)
    }

    /// Writes the file to `path` atomically: it is validated and laid out first, written to a
    /// temporary file next to `path`, synced, and renamed over `path`. On any error the
    /// temporary file is removed and `path` is untouched. Returns the file length.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<u64, WriteError> {
        self.write_atomic_through(path.as_ref(), &mut |w, b| w.write_all(b))
    }

    /// [`FileBuilder::write_atomic`] with every byte passed through `write` (tests inject
    /// failures here).
    fn write_atomic_through(&self, path: &Path, write: &mut ByteSink<'_>) -> Result<u64, WriteError> {
        let layout = self.layout()?;
        write_file_atomic(path, |w: &mut BufWriter<File>, tmp: &Path| {
            self.emit(&layout, &mut |b| write(w, b))
                .map_err(|source| WriteError::Io { path: tmp.to_path_buf(), source })
        })?;
        Ok(layout.file_length)
    }
}

/// The one atomic writer of edadm (models, PNGs, `.npy`, calibration sets, caches): `write`
/// fills a temporary file next to `path` — a new name created with `create_new`, so nothing
/// already there (a file, a planted symlink) is followed or overwritten — which is then synced
/// and renamed over `path`, and the directory synced. On any error the temporary file is removed
/// and `path` is untouched. `write` gets the buffered file and the temporary file's path (for
/// its own error messages).
pub fn write_file_atomic<E: From<WriteError>>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>, &Path) -> Result<(), E>,
) -> Result<(), E> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WriteError::Io { path: p, source }
    };
    let file_name = path.file_name().ok_or_else(|| WriteError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (file, tmp) = create_temp(&dir, &file_name.to_string_lossy())?;
    let guard = TempGuard(Some(tmp.clone()));
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w, &tmp)?;
    let file = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    guard.disarm();
    // Make the rename durable. Directories cannot be synced on every platform; the file itself
    // is complete either way.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Where [`FileBuilder::write_atomic_through`] sends each chunk of the file.
type ByteSink<'a> = dyn FnMut(&mut BufWriter<File>, &[u8]) -> std::io::Result<()> + 'a;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn create_temp(dir: &Path, name: &str) -> Result<(File, PathBuf), WriteError> {
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(WriteError::Io { path: tmp, source }),
        }
    }
}

/// Removes the temporary file unless disarmed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::*;

    fn tiny() -> FileBuilder<'static> {
        let mut b = FileBuilder::new();
        let w = b.add_tensor("w", DType::F32, &[2, 1], vec![0u8; 8]).unwrap();
        b.set_graph(Graph {
            num_values: 2,
            inputs: vec![GraphInput {
                value: ValueId(0),
                kind: InputKind::Sample { channels: 1, height: 1, width: 1 },
            }],
            outputs: vec![GraphOutput { value: ValueId(1), prediction: Prediction::Epsilon }],
            units: vec![],
            nodes: vec![Node {
                name: "fc".into(),
                op: Op::Linear(Linear { in_features: 1, out_features: 2, weight: w, bias: None }),
                inputs: vec![ValueId(0)],
                output: ValueId(1),
                unit: None,
                quant: None,
            }],
            step_groups: None,
        });
        b
    }

    fn dir_entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("edadm-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn interrupted_write_leaves_nothing_under_the_final_name() {
        let d = scratch("interrupt");
        let target = d.join("m.edq");
        let b = tiny();
        let total = b.to_bytes().unwrap().len();
        // Fail at every point of the stream: never a file under the final name, never a
        // temporary file left behind.
        for fail_at in [0, 1, 64, 127, 128, 200, total - 1] {
            let mut written = 0usize;
            let r = b.write_atomic_through(&target, &mut |w, bytes| {
                if written + bytes.len() > fail_at {
                    return Err(std::io::Error::other("injected failure"));
                }
                written += bytes.len();
                w.write_all(bytes)
            });
            assert!(matches!(r, Err(WriteError::Io { .. })), "fail_at {fail_at}: {r:?}");
            assert!(dir_entries(&d).is_empty(), "fail_at {fail_at}: left {:?}", dir_entries(&d));
        }
        // And a good write replaces an existing file atomically.
        std::fs::write(&target, b"old").unwrap();
        b.write_atomic(&target).unwrap();
        assert_eq!(dir_entries(&d), vec!["m.edq".to_string()]);
        assert_eq!(std::fs::read(&target).unwrap(), b.to_bytes().unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_rename_cleans_up() {
        let d = scratch("rename");
        let target = d.join("sub");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), b"keep").unwrap();
        let r = tiny().write_atomic(&target);
        assert!(matches!(r, Err(WriteError::Io { .. })));
        assert_eq!(dir_entries(&d), vec!["sub".to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn invalid_model_writes_nothing() {
        let d = scratch("invalid");
        let mut b = tiny();
        b.graph_mut().nodes[0].inputs = vec![ValueId(1)];
        let r = b.write_atomic(d.join("m.edq"));
        assert!(matches!(r, Err(WriteError::Format(FormatError::Graph { .. }))), "{r:?}");
        assert!(dir_entries(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn add_tensor_checks_length_and_names() {
        let mut b = FileBuilder::new();
        assert!(matches!(
            b.add_tensor("a", DType::F32, &[3], vec![0u8; 8]),
            Err(FormatError::Tensor { problem: TensorProblem::LengthMismatch { expected: 12, .. }, .. })
        ));
        b.add_tensor("a", DType::I4, &[3], vec![0u8; 2]).unwrap();
        assert!(matches!(b.add_tensor("a", DType::U8, &[1], vec![0u8]), Err(FormatError::DuplicateName { .. })));
        assert!(matches!(b.set_alignment(96), Err(FormatError::BadAlignment { .. })));
        assert!(matches!(b.set_alignment(32), Err(FormatError::BadAlignment { .. })));
        b.set_alignment(4096).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_never_followed() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("edq-planted-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        // Links at the next temporary names this process would try.
        let next = TEMP_COUNTER.load(Ordering::Relaxed);
        let planted: Vec<PathBuf> =
            (next..next + 64).map(|n| dir.join(format!(".out.{}.{n}.tmp", std::process::id()))).collect();
        for p in &planted {
            std::os::unix::fs::symlink(&victim, p).unwrap();
        }
        let out = dir.join("out");
        write_file_atomic::<WriteError>(&out, |w, _| {
            w.write_all(b"new").map_err(|source| WriteError::Io { path: out.clone(), source })
        })
        .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert!(planted.iter().all(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
