//! Fusion passes over the planned steps, each a rewrite that keeps the bytes of the separate
//! steps (kernels' tests; the runtime and quantizer tests compare fused and unfused plans):
//! norm + activation, norm + quantization, adds into the integer conv's output pass, and an
//! upsampling into the next integer conv's quantization.

use edadm_format::graph::ValueId;
use edadm_kernels::ops::act::Activation;
use edadm_kernels::ops::elementwise::Binary;

use super::{Planned, Step};

/// Fuses a GroupNorm with the activation that is the only reader of its output (the SiLU of
/// every DDPM block): one pass instead of two, one buffer less.
pub(super) fn norm_activation(
    steps: &mut Vec<Planned<'_>>,
    scratch: &mut Vec<usize>,
    g: &edadm_format::Graph,
    keep: &[ValueId],
) {
    let readers = reader_counts(steps, g, keep);
    let mut i = 0;
    while i + 1 < steps.len() {
        let fusable = matches!(steps[i].step, Step::GroupNorm { act: Activation::None, .. })
            && readers[steps[i].out as usize] == 1
            && matches!(steps[i + 1].step, Step::Act { x, .. } if x == steps[i].out);
        if fusable {
            let next = steps.remove(i + 1);
            scratch.remove(i + 1);
            if let (Step::GroupNorm { act, .. }, Step::Act { act: a, .. }) = (&mut steps[i].step, &next.step) {
                *act = *a;
            }
            steps[i].out = next.out;
        }
        i += 1;
    }
}

/// Values read by more than one step, kept, or output: they must stay f32.
fn reader_counts(steps: &[Planned<'_>], g: &edadm_format::Graph, keep: &[ValueId]) -> Vec<usize> {
    let mut readers = vec![0usize; g.num_values as usize];
    for p in steps {
        for &v in &p.inputs {
            readers[v as usize] += 1;
        }
    }
    for o in &g.outputs {
        readers[o.value.0 as usize] += 1;
    }
    for v in keep {
        if let Some(r) = readers.get_mut(v.0 as usize) {
            *r += 1;
        }
    }
    readers
}

/// Fuses a GroupNorm (+ activation) with the quantization of the integer conv that is its only
/// reader (the conv1/conv2 of every residual block): the norm writes u8 in the conv's input
/// layout, the conv skips its quantization pass, the f32 tensor between them disappears. The
/// bytes are those of the separate norm and quantization (kernels' tests).
pub(super) fn norm_quantize(
    steps: &mut [Planned<'_>],
    scratch: &mut [usize],
    slot_len: &mut [usize],
    g: &edadm_format::Graph,
    keep: &[ValueId],
) {
    let readers = reader_counts(steps, g, keep);
    for i in 0..steps.len() {
        let out = steps[i].out;
        if readers[out as usize] != 1 || !matches!(steps[i].step, Step::GroupNorm { .. }) {
            continue;
        }
        let Some(j) = (i + 1..steps.len()).find(|&j| steps[j].inputs.contains(&out)) else { continue };
        let (q, layout) = match &mut steps[j].step {
            Step::QConv { x, pre, groups, .. } if *x == out && groups.len() == 1 && !*pre => {
                *pre = true;
                (groups[0].q.clone(), groups[0].layout)
            }
            _ => continue,
        };
        let taken = std::mem::replace(&mut steps[i].step, Step::Act { x: 0, act: Activation::None });
        if let Step::GroupNorm { x, groups, eps, gamma, beta, act, .. } = taken {
            steps[i].step = Step::GroupNormQ { x, groups, eps, gamma, beta, act, q, layout };
        }
        let words = layout.len().div_ceil(4);
        slot_len[out as usize] = words;
        scratch[j] -= words;
    }
}

/// Fuses an `Add` into the integer conv that produces one of its operands when that conv's
/// output has no other reader and the other operand already exists when the conv runs: the
/// residual connections (`x + conv2(h)`, `shortcut(x) + h`, attention's `x + proj_out(h)`) and
/// the timestep offsets (`conv1(h) + temb[:, :, None, None]`). The conv adds it in the pass
/// that writes its output; the add's pass and the conv's own output buffer disappear. The f32
/// sums are those of the separate addition (kernels' tests).
pub(super) fn conv_add(
    steps: &mut Vec<Planned<'_>>,
    scratch: &mut Vec<usize>,
    slot_len: &mut [usize],
    shapes: &[Vec<usize>],
    g: &edadm_format::Graph,
    keep: &[ValueId],
) {
    let readers = reader_counts(steps, g, keep);
    let mut j = 0;
    while j < steps.len() {
        let Step::Binary { op: Binary::Add, a, b, .. } = steps[j].step else {
            j += 1;
            continue;
        };
        let producer = |steps: &[Planned<'_>], v: u32| steps[..j].iter().rposition(|p| p.out == v);
        // A per-channel operand computed between the conv and the add from values that exist
        // before the conv (the timestep projection, computed after conv1 in graph order) moves
        // in front of the conv, so the conv can add it.
        if let (Some(ia), Some(ib)) = (producer(steps, a), producer(steps, b)) {
            let early = |k: usize, before: usize| {
                steps[k]
                    .inputs
                    .iter()
                    .all(|&v| steps[..before].iter().any(|p| p.out == v) || !steps.iter().any(|p| p.out == v))
            };
            let (sa, sb) = (&shapes[a as usize], &shapes[b as usize]);
            let fits = sa == sb || (sa.len() == 4 && sb.iter().product::<usize>() == sa[0] * sa[1]);
            let conv = matches!(steps[ia].step, Step::QConv { add: None, .. });
            if ia < ib && conv && fits && readers[a as usize] == 1 && early(ib, ia) {
                let moved = steps.remove(ib);
                steps.insert(ia, moved);
                let sl = scratch.remove(ib);
                scratch.insert(ia, sl);
            }
        }
        // The operand computed last is the candidate: the other one must exist before it runs.
        let (pa, pb) = (producer(steps, a), producer(steps, b));
        let (conv_v, other, i) = match (pa, pb) {
            (Some(ia), pb) if pb.is_none_or(|ib| ib < ia) => (a, b, ia),
            (pa, Some(ib)) if pa.is_none_or(|ia| ia < ib) => (b, a, ib),
            _ => {
                j += 1;
                continue;
            }
        };
        let out_shape = &shapes[conv_v as usize];
        let full = shapes[other as usize] == *out_shape;
        // `[N, C]` broadcast over the positions is only allowed for the add's second operand.
        let per_channel = other == b
            && out_shape.len() == 4
            && shapes[other as usize].iter().product::<usize>() == out_shape[0] * out_shape[1];
        let fusable = a != b
            && readers[conv_v as usize] == 1
            && (full || per_channel)
            && matches!(&steps[i].step, Step::QConv { add: None, .. });
        if !fusable {
            j += 1;
            continue;
        }
        let fused = steps.remove(j);
        scratch.remove(j);
        if let Step::QConv { add, .. } = &mut steps[i].step {
            *add = Some((other, full));
        }
        steps[i].inputs.push(other);
        steps[i].out = fused.out;
        slot_len[conv_v as usize] = 0;
    }
}

/// Fuses a nearest-neighbour upsampling into the integer conv that is its only reader (the conv
/// after every `Upsample` of a UNet): the conv quantizes the small tensor and writes each byte
/// `s × s` times into its input layout; the upsampling pass, its f32 tensor and 1 − 1/s² of the
/// quantization work disappear. The bytes are those of the two separate passes (kernels' tests).
pub(super) fn upsample_quantize(
    steps: &mut Vec<Planned<'_>>,
    scratch: &mut Vec<usize>,
    slot_len: &mut [usize],
    g: &edadm_format::Graph,
    keep: &[ValueId],
) {
    let readers = reader_counts(steps, g, keep);
    let mut i = 0;
    while i < steps.len() {
        let (up_out, src, factor) = match steps[i].step {
            Step::Upsample { x, s, .. } => (steps[i].out, x, s),
            _ => {
                i += 1;
                continue;
            }
        };
        let reader = (i + 1..steps.len()).find(|&j| steps[j].inputs.contains(&up_out));
        let fusable = readers[up_out as usize] == 1
            && reader.is_some_and(
                |j| matches!(&steps[j].step, Step::QConv { x, pre: false, upsample: 1, .. } if *x == up_out),
            );
        let Some(j) = reader.filter(|_| fusable) else {
            i += 1;
            continue;
        };
        if let Step::QConv { x, upsample, .. } = &mut steps[j].step {
            *x = src;
            *upsample = factor;
        }
        for v in &mut steps[j].inputs {
            if *v == up_out {
                *v = src;
            }
        }
        steps.remove(i);
        scratch.remove(i);
        slot_len[up_out as usize] = 0;
    }
}
