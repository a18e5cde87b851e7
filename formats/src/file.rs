//! Reading a file: [`ModelFile`] over any byte container, [`MappedModel`] over a memory map.

use std::path::Path;

use crate::codec::crc_matches;
use crate::error::FormatError;
use crate::graph::{Graph, TensorId, TensorMeta, decode_graph, validate_graph};
use crate::header::{Header, gaps};
use crate::metadata::{Metadata, decode_metadata};
use crate::tensor::{TensorEntry, TensorRecord, TensorView, decode_tensor_table, validate_tensor_table};

/// A parsed and validated `.edq` file over a byte container `B` (`&[u8]`, `Vec<u8>`,
/// [`memmap2::Mmap`]). Parsing reads and checks the header, every section checksum, the
/// metadata, the graph and the tensor table; tensor data is not touched until it is used or
/// [`ModelFile::verify`] is called.
#[derive(Debug)]
pub struct ModelFile<B> {
    bytes: B,
    header: Header,
    metadata: Metadata,
    graph: Graph,
    tensors: Vec<TensorEntry>,
    /// Tensor indices sorted by name.
    by_name: Vec<u32>,
}

/// A file opened with [`MappedModel::open`]: the tensors are read straight from the mapping.
pub type MappedModel = ModelFile<memmap2::Mmap>;

impl<'a> ModelFile<&'a [u8]> {
    /// Parses a file held in memory, without copying tensor data.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        Self::from_bytes(bytes)
    }
}

impl ModelFile<memmap2::Mmap> {
    /// Memory-maps and parses the file at `path`.
    ///
    /// The mapping is shared and read-only: the file must not be modified while it is open
    /// (the usual contract of memory-mapped files; `edadm` itself only ever replaces files by
    /// renaming a new one over them, which leaves existing mappings intact).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let path = path.as_ref();
        // Checked before opening: opening a FIFO for reading blocks until a writer appears.
        let kind = std::fs::metadata(path).map_err(|e| FormatError::io(path, &e))?;
        if !kind.is_file() {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
            return Err(FormatError::io(path, &e));
        }
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, &e))?;
        let meta = file.metadata().map_err(|e| FormatError::io(path, &e))?;
        if !meta.is_file() {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
            return Err(FormatError::io(path, &e));
        }
        if meta.len() == 0 {
            // Nothing to map; report the truncation the same way a parse of no bytes does.
            return Err(ModelFile::parse(&[]).err().unwrap_or(FormatError::FileLength { declared: 0, actual: 0 }));
        }
        // SAFETY: the mapping is read-only and private to this value. Memory-mapped I/O is sound
        // as long as no other process truncates or rewrites the file while it is mapped, which is
        // the documented contract of `open`.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, &e))?;
        Self::from_bytes(map)
    }
}

impl<B: AsRef<[u8]>> ModelFile<B> {
    /// Parses and validates `bytes`.
    pub fn from_bytes(bytes: B) -> Result<Self, FormatError> {
        let b = bytes.as_ref();
        let header = Header::decode(b)?;
        for (start, end) in header.header_region_gaps() {
            check_zero(b, start, end)?;
        }
        for (section, s) in header.sections() {
            let computed = crc32fast::hash(slice(b, s.offset, s.length));
            if !crc_matches(s.crc32, computed) {
                return Err(FormatError::SectionChecksum { section, offset: s.offset, stored: s.crc32, computed });
            }
        }
        let metadata =
            decode_metadata(slice(b, header.metadata.offset, header.metadata.length), header.metadata.offset)?;
        let (graph, graph_offsets) = decode_graph(
            slice(b, header.graph.offset, header.graph.length),
            header.graph.offset,
            header.version_minor,
        )?;
        let tensors =
            decode_tensor_table(slice(b, header.tensors.offset, header.tensors.length), header.tensors.offset)?;

        let records: Vec<TensorRecord<'_>> = tensors.iter().map(|e| record(b, e)).collect();
        validate_tensor_table(&records, u64::from(header.alignment), header.data_length)?;
        let metas: Vec<TensorMeta<'_>> =
            records.iter().map(|r| TensorMeta { dtype: r.dtype, shape: r.shape }).collect();
        validate_graph(&graph, &metas, Some(&graph_offsets))?;

        let mut by_name: Vec<u32> = (0..tensors.len() as u32).collect();
        by_name.sort_unstable_by_key(|&i| records[i as usize].name);
        drop(metas);
        drop(records);
        Ok(ModelFile { bytes, header, metadata, graph, tensors, by_name })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// What holds the bytes (a memory map, a buffer).
    pub fn source(&self) -> &B {
        &self.bytes
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Number of tensors.
    pub fn num_tensors(&self) -> usize {
        self.tensors.len()
    }

    fn view(&self, i: usize) -> TensorView<'_> {
        let b = self.bytes.as_ref();
        let e = &self.tensors[i];
        let r = record(b, e);
        let file_offset = self.header.data_offset + e.offset;
        TensorView {
            id: TensorId(i as u32),
            name: r.name,
            dtype: e.dtype,
            shape: &e.shape,
            data: slice(b, file_offset, e.length),
            file_offset,
            crc32: e.crc32,
        }
    }

    /// The tensor with the given id.
    pub fn tensor(&self, id: TensorId) -> Option<TensorView<'_>> {
        ((id.0 as usize) < self.tensors.len()).then(|| self.view(id.0 as usize))
    }

    /// The tensor with the given name.
    pub fn tensor_by_name(&self, name: &str) -> Option<TensorView<'_>> {
        let b = self.bytes.as_ref();
        let i = self.by_name.binary_search_by(|&i| record(b, &self.tensors[i as usize]).name.cmp(name)).ok()?;
        Some(self.view(self.by_name[i] as usize))
    }

    /// All tensors in table order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> + '_ {
        (0..self.tensors.len()).map(|i| self.view(i))
    }

    /// Checks every tensor's checksum, that the data section's padding is zero, and that every
    /// weight scale of a quantization record is a normal number (finite, not zero, not
    /// subnormal: §5.5). Reads all tensor data.
    pub fn verify(&self) -> Result<(), FormatError> {
        for t in self.tensors() {
            t.verify()?;
        }
        check_weight_scales(self.graph(), |id| self.tensor(id).map(|t| (t.name, t.data, t.file_offset)))?;
        let mut spans: Vec<(u64, u64)> =
            self.tensors.iter().filter(|e| e.length > 0).map(|e| (e.offset, e.offset + e.length)).collect();
        spans.sort_unstable();
        let base = self.header.data_offset;
        for (s, e) in gaps(0, self.header.data_length, &spans) {
            check_zero(self.bytes.as_ref(), base + s, base + e)?;
        }
        Ok(())
    }

    /// Gives back the byte container.
    pub fn into_inner(self) -> B {
        self.bytes
    }
}

/// `b[offset..offset+len]`; callers pass ranges that the header checks put inside the file.
fn slice(b: &[u8], offset: u64, len: u64) -> &[u8] {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
    let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX).min(b.len());
    &b[start..end]
}

fn record<'b>(b: &'b [u8], e: &'b TensorEntry) -> TensorRecord<'b> {
    TensorRecord {
        // The range was validated as UTF-8 when the table was decoded.
        name: std::str::from_utf8(&b[e.name.clone()]).unwrap_or("\u{fffd}"),
        dtype: e.dtype,
        shape: &e.shape,
        offset: e.offset,
        length: e.length,
        crc32: e.crc32,
        entry_offset: e.entry_offset,
    }
}

/// Every weight scale of every quantization record is a normal number (finite, not zero, not
/// subnormal; §5.5): `tensor` gives a tensor's name, little-endian f32 bytes and file offset.
pub(crate) fn check_weight_scales<'a>(
    graph: &Graph,
    tensor: impl Fn(TensorId) -> Option<(&'a str, &'a [u8], u64)>,
) -> Result<(), FormatError> {
    for n in &graph.nodes {
        let Some(crate::graph::NodeQuant::Weight(w)) = &n.quant else { continue };
        for g in &w.groups {
            // The graph validation checked the tensor's dtype and length against the node.
            let Some((name, data, offset)) = tensor(g.weight_scales) else { continue };
            let scales = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            if let Some((i, s)) = scales.enumerate().find(|(_, s)| !s.is_normal()) {
                return Err(FormatError::BadValue {
                    what: "weight scale",
                    offset: offset + 4 * i as u64,
                    detail: format!(
                        "{name}[{i}] of node {:?} is {s}; weight scales must be normal numbers (finite, not 0, not subnormal)",
                        n.name
                    ),
                });
            }
        }
    }
    Ok(())
}

fn check_zero(b: &[u8], start: u64, end: u64) -> Result<(), FormatError> {
    let s = slice(b, start, end - start);
    match s.iter().position(|&x| x != 0) {
        None => Ok(()),
        Some(i) => Err(FormatError::ReservedNonZero { offset: start + i as u64, found: s[i] }),
    }
}
