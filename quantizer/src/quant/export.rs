//! Export of a quantized model into `.edq` (METHOD.md §4.3): the source file's graph, metadata
//! and tensors, with every quantized node's weight replaced by its integers (`i8`, or packed
//! `i4` low nibble first) in the op's layout, its per-output-channel steps added as f32
//! tensors, and the quantization records set on the nodes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use edadm_format::graph::{AttentionQuant, NodeQuant, Op, QuantGroup, StepEntry, StepGroups, TensorId, WeightQuant};
use edadm_format::{DType, FileBuilder, MetaValue};
use edadm_runtime::Model;

use super::model::{NodeQ, QModel, WNode};
use crate::error::{QuantError, Result};

/// Packs signed 4-bit values, element `2i` in the low nibble of byte `i`.
pub fn pack_i4(v: &[i8]) -> Vec<u8> {
    v.chunks(2)
        .map(|p| {
            let lo = (p[0] as u8) & 0x0F;
            let hi = p.get(1).map_or(0, |&h| (h as u8) & 0x0F);
            lo | (hi << 4)
        })
        .collect()
}

/// The integer weights of `w` in the op's layout.
pub fn op_layout_ints(w: &WNode) -> Vec<i8> {
    if !w.transposed {
        return w.ints.clone();
    }
    // Row layout [out, in, k] → op layout [in, out, k].
    let (out, inp, k) = (w.out, w.inp, w.kernel);
    let mut v = vec![0i8; w.ints.len()];
    for o in 0..out {
        for i in 0..inp {
            let src = (o * inp + i) * k;
            let dst = (i * out + o) * k;
            v[dst..dst + k].copy_from_slice(&w.ints[src..src + k]);
        }
    }
    v
}

/// Builds the quantized file's bytes. `meta` entries are added to the source's metadata.
pub fn build(source: &Model, q: &QModel, meta: Vec<(String, MetaValue)>) -> Result<Vec<u8>> {
    let file = source.file();
    let mut graph = source.graph().clone();
    if graph.nodes.len() != q.nodes.len() {
        return Err(QuantError::Invalid("the quantized state does not belong to this model".into()));
    }
    // Which tensors are replaced by integers.
    let mut replaced: HashMap<TensorId, usize> = HashMap::new();
    for (ni, n) in q.nodes.iter().enumerate() {
        if let Some(NodeQ::Weight(_)) = n {
            let t = graph.nodes[ni].op.weight().expect("weighted node");
            if replaced.insert(t, ni).is_some() {
                return Err(QuantError::Invalid(format!(
                    "weight tensor {} is shared by several nodes; shared weights cannot be quantized",
                    t.0
                )));
            }
        }
    }
    // Corrected biases: the node's own bias tensor is replaced (an unshared one), or a new one
    // is added.
    let mut bias_uses: HashMap<TensorId, usize> = HashMap::new();
    for n in &graph.nodes {
        for (_, t) in n.op.tensor_refs() {
            *bias_uses.entry(t).or_default() += 1;
        }
    }
    let mut bias_replaced: HashMap<TensorId, usize> = HashMap::new();
    let mut bias_added: Vec<usize> = Vec::new();
    for (ni, n) in q.nodes.iter().enumerate() {
        if let Some(NodeQ::Weight(w)) = n
            && w.bias.is_some()
        {
            match op_bias(&graph.nodes[ni].op) {
                Some(t) if bias_uses.get(&t) == Some(&1) => {
                    bias_replaced.insert(t, ni);
                }
                Some(_) => {
                    return Err(QuantError::Invalid(format!(
                        "{}: its bias tensor is shared, so it cannot be corrected",
                        graph.nodes[ni].name
                    )));
                }
                None => bias_added.push(ni),
            }
        }
    }
    let mut b = FileBuilder::new();
    b.set_alignment(file.header().alignment).map_err(|e| QuantError::Invalid(e.to_string()))?;
    let mut md = file.metadata().clone();
    for (k, v) in meta {
        md.insert(k, v);
    }
    b.set_metadata(md);
    let err = |e: edadm_format::FormatError| QuantError::Invalid(format!("export: {e}"));
    for view in file.tensors() {
        match replaced.get(&view.id) {
            Some(&ni) => {
                let w = q.weight(ni).expect("weighted");
                let ints = op_layout_ints(w);
                let (dtype, bytes) = match w.bits {
                    5..=8 => (DType::I8, ints.iter().map(|&v| v as u8).collect::<Vec<u8>>()),
                    4 => (DType::I4, pack_i4(&ints)),
                    b => return Err(QuantError::Invalid(format!("{b}-bit weights cannot be stored"))),
                };
                b.add_tensor(view.name, dtype, view.shape, bytes).map_err(err)?;
            }
            None => match bias_replaced.get(&view.id) {
                Some(&ni) => {
                    b.add_tensor(view.name, DType::F32, view.shape, corrected_bias(q, ni)).map_err(err)?;
                }
                None => {
                    b.add_tensor(view.name, view.dtype, view.shape, Cow::Borrowed(view.data)).map_err(err)?;
                }
            },
        }
    }
    for ni in bias_added {
        let bytes = corrected_bias(q, ni);
        let name = format!("{}.bias_corrected", graph.nodes[ni].name);
        let id = b.add_tensor(name, DType::F32, &[bytes.len() as u64 / 4], bytes).map_err(err)?;
        match &mut graph.nodes[ni].op {
            Op::Conv2d(c) => c.bias = Some(id),
            Op::ConvTranspose2d(c) => c.bias = Some(id),
            Op::Linear(l) => l.bias = Some(id),
            _ => unreachable!("weighted op"),
        }
    }
    for (ni, n) in q.nodes.iter().enumerate() {
        let node = &mut graph.nodes[ni];
        match n {
            None => {}
            Some(NodeQ::Weight(w)) => {
                let mut groups = Vec::with_capacity(w.groups.len());
                for (g, grp) in w.groups.iter().enumerate() {
                    let name = if w.groups.len() == 1 {
                        format!("{}.weight_scales", node.name)
                    } else {
                        format!("{}.weight_scales.{g}", node.name)
                    };
                    let bytes: Vec<u8> = grp.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let id = b.add_tensor(name, DType::F32, &[grp.scales.len() as u64], bytes).map_err(err)?;
                    groups.push(QuantGroup {
                        channel_start: grp.start as u32,
                        weight_scales: id,
                        input: grp.input.map(|a| a.to_format()),
                    });
                }
                node.quant = Some(NodeQuant::Weight(WeightQuant { weight_bits: w.bits as u8, groups }));
            }
            Some(NodeQ::Attention(a)) => {
                node.quant = Some(NodeQuant::Attention(AttentionQuant {
                    q: a[0].to_format(),
                    k: a[1].to_format(),
                    v: a[2].to_format(),
                    prob: a[3].to_format(),
                }));
            }
        }
    }
    graph.step_groups = q.steps.as_ref().map(|s| {
        let mut entries: Vec<StepEntry> = q
            .act_keys(0..q.nodes.len())
            .into_iter()
            .map(|(ni, slot)| StepEntry {
                node: ni as u32,
                slot: slot as u32,
                acts: Vec::with_capacity(s.groups.len()),
            })
            .collect();
        let index: HashMap<(u32, u32), usize> =
            entries.iter().enumerate().map(|(i, e)| ((e.node, e.slot), i)).collect();
        for group in &s.groups {
            for &((ni, slot), a) in group {
                if let Some(&i) = index.get(&(ni as u32, slot as u32)) {
                    entries[i].acts.push(a.to_format());
                }
            }
        }
        StepGroups { edges: s.edges.clone(), entries }
    });
    b.set_graph(graph);
    b.to_bytes().map_err(err)
}

/// The corrected bias of weighted node `ni`, f32 little-endian bytes.
fn corrected_bias(q: &QModel, ni: usize) -> Vec<u8> {
    let bias = q.weight(ni).and_then(|w| w.bias.as_ref()).expect("corrected");
    bias.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The bias tensor of a weighted op.
fn op_bias(op: &Op) -> Option<TensorId> {
    match op {
        Op::Conv2d(c) => c.bias,
        Op::ConvTranspose2d(c) => c.bias,
        Op::Linear(l) => l.bias,
        _ => None,
    }
}

/// Builds and writes the quantized file atomically; returns its size.
pub fn write(path: &Path, source: &Model, q: &QModel, meta: Vec<(String, MetaValue)>) -> Result<u64> {
    let bytes = build(source, q, meta)?;
    crate::io::write_atomic(path, &bytes)?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i4_packs_low_nibble_first_and_round_trips_through_the_kernels() {
        let v: Vec<i8> = vec![-8, 7, -1, 0, 3];
        let p = pack_i4(&v);
        assert_eq!(p, vec![0x78, 0x0F, 0x03]);
        let mut back = vec![0i8; v.len()];
        edadm_kernels::qgemm::unpack_i4(&p, &mut back);
        assert_eq!(back, v);
    }
}
