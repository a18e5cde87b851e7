//! How a plan describes itself in reports: each step's op name and kernel variant, and the bytes
//! of weights prepared (converted or packed) at plan time.

use edadm_kernels::Kernels;
use edadm_kernels::ops::act::Activation;
use edadm_kernels::ops::qconv::ConvMode;

use super::{Floats, Step, owned_len};

/// What a step runs on: the microkernel of its GEMM, or the SIMD tier of its element-wise code.
pub(crate) fn step_variant(s: &Step<'_>, k: &Kernels) -> (&'static str, String) {
    let simd = k.simd_name();
    match s {
        Step::Conv { .. } => ("conv f32", k.sgemm().name.to_string()),
        Step::ConvT { .. } => ("conv_transpose f32", k.sgemm().name.to_string()),
        Step::Linear { .. } => ("linear f32", k.sgemm().name.to_string()),
        Step::GroupNorm { act: Activation::None, .. } => ("group_norm", simd.into()),
        Step::GroupNorm { .. } => ("group_norm+act", simd.into()),
        Step::GroupNormQ { .. } => ("group_norm+quantize", simd.into()),
        Step::LayerNormChw { .. } | Step::LayerNormChannel { .. } => ("layer_norm", simd.into()),
        Step::Act { .. } => ("activation", simd.into()),
        Step::Binary { .. } => ("add/mul", simd.into()),
        Step::Concat { .. } => ("concat", "copy".into()),
        Step::Pad { .. } => ("pad", "copy".into()),
        Step::Upsample { .. } => ("upsample", "copy".into()),
        Step::AvgPool { .. } => ("avg_pool", "scalar".into()),
        Step::Sinusoid { .. } | Step::Table { .. } => ("timestep embedding", "scalar".into()),
        Step::Attention { .. } => ("attention f32", format!("{} + {simd} softmax", k.sgemm().name)),
        Step::QConv { plan, groups, pre, add, upsample, .. } => (
            "conv u8×i8",
            format!(
                "{} ({}{}{}{}{})",
                plan.kernel().name,
                if *pre { "quantized by the norm, " } else { "" },
                if *upsample > 1 { "upsampled by the quantization, " } else { "" },
                match plan.mode() {
                    ConvMode::Rows => "in place, row tiles",
                    ConvMode::Direct => "in place",
                    ConvMode::Gathered => "gathered",
                },
                if groups.len() > 1 { format!(", {} input groups", groups.len()) } else { String::new() },
                match add {
                    Some((_, true)) => ", + residual",
                    Some((_, false)) => ", + channel offsets",
                    None => "",
                }
            ),
        ),
        Step::QConvT { plan, .. } => ("conv_transpose u8×i8", plan.kernel().name.to_string()),
        Step::QAttention { .. } => ("attention u8×i8", format!("{} + {simd} softmax", k.qgemm().name)),
    }
}

pub(super) fn step_prepared_bytes(s: &Step<'_>) -> usize {
    let opt = |f: &Option<Floats<'_>>| f.as_ref().map_or(0, owned_len);
    match s {
        Step::Conv { parts, bias, .. } => parts.iter().map(|p| p.plan.packed_bytes()).sum::<usize>() + opt(bias),
        Step::ConvT { w, bias, .. } | Step::Linear { w, bias, .. } => w.len() * 4 + opt(bias),
        Step::GroupNorm { gamma, beta, .. }
        | Step::GroupNormQ { gamma, beta, .. }
        | Step::LayerNormChw { gamma, beta, .. }
        | Step::LayerNormChannel { gamma, beta, .. } => opt(gamma) + opt(beta),
        Step::Table { table, .. } => owned_len(table),
        Step::QConv { plan, bias, groups, .. } => {
            plan.packed_bytes() + opt(bias) + groups.iter().flat_map(|g| &g.scale).map(|s| s.len() * 4).sum::<usize>()
        }
        Step::QConvT { plan, bias, scale, .. } => {
            plan.packed_bytes() + opt(bias) + scale.iter().map(|s| s.len() * 4).sum::<usize>()
        }
        _ => 0,
    }
}
