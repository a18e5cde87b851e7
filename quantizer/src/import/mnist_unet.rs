//! The MNIST UNet of `shared/models/mnist-unet` (upstream `net/UNet.py`, `UNet(n_steps=1000,
//! channels=[10, 20, 40, 80], pe_dim=128, residual=True)`), built from its keys; channel counts
//! and the LayerNorm sizes come from the tensor shapes.

use edadm_format::FileBuilder;
use edadm_format::graph::*;
use edadm_format::metadata::keys;

use super::ImportError;
use super::builder::{GraphBuilder, WeightDType};
use super::checkpoint::Checkpoint;

fn shape(b: &GraphBuilder<'_>, key: &str) -> Result<Vec<usize>, ImportError> {
    b.ckpt()
        .shape(key)
        .map(<[usize]>::to_vec)
        .ok_or_else(|| ImportError::Missing { key: key.into(), origin: b.ckpt().source.clone() })
}

/// `UnetBlock`: LayerNorm over (C, H, W) → conv3×3 → ReLU → conv3×3, plus the residual (1×1
/// `residual_conv` when channels change), then ReLU. One reconstruction unit.
fn unet_block(b: &mut GraphBuilder<'_>, prefix: &str, x: ValueId) -> Result<ValueId, ImportError> {
    let ln_shape = shape(b, &format!("{prefix}.ln.weight"))?;
    let [cin, _, _] = <[usize; 3]>::try_from(ln_shape.as_slice()).map_err(|_| ImportError::Shape {
        key: format!("{prefix}.ln.weight"),
        expected: vec![0, 0, 0],
        found: ln_shape.clone(),
    })?;
    let cout = shape(b, &format!("{prefix}.conv1.weight"))?[0];
    b.begin_unit(prefix, UnitKind::ResBlock);
    let w = b.param(&format!("{prefix}.ln.weight"), &ln_shape, false)?;
    let bias = b.param(&format!("{prefix}.ln.bias"), &ln_shape, false)?;
    let ln = LayerNorm {
        axes: LayerNormAxes::ChannelSpatial,
        channels: cin as u32,
        eps: 1e-5,
        weight: Some(w),
        bias: Some(bias),
    };
    let h = b.node(&format!("{prefix}.ln"), Op::LayerNorm(ln), &[x]);
    let h = b.conv(&format!("{prefix}.conv1"), h, cin, cout, 3, 1, Padding::uniform(1))?;
    let h = b.node(&format!("{prefix}.relu1"), Op::Relu, &[h]);
    let h = b.conv(&format!("{prefix}.conv2"), h, cout, cout, 3, 1, Padding::uniform(1))?;
    let res = if b.ckpt().has(&format!("{prefix}.residual_conv.weight")) {
        b.conv(&format!("{prefix}.residual_conv"), x, cin, cout, 1, 1, Padding::default())?
    } else {
        x
    };
    let h = b.node(&format!("{prefix}.add"), Op::Add, &[h, res]);
    let out = b.node(&format!("{prefix}.relu_out"), Op::Relu, &[h]);
    b.end_unit();
    Ok(out)
}

fn linear_unit(b: &mut GraphBuilder<'_>, prefix: &str, x: ValueId) -> Result<ValueId, ImportError> {
    let s = shape(b, &format!("{prefix}.weight"))?;
    if s.len() != 2 {
        return Err(ImportError::Shape { key: format!("{prefix}.weight"), expected: vec![0, 0], found: s });
    }
    b.begin_unit(prefix, UnitKind::Layer);
    let y = b.linear(prefix, x, s[1], s[0])?;
    b.end_unit();
    Ok(y)
}

/// Builds the mnist-unet graph from `ckpt`.
pub fn build(ckpt: &mut Checkpoint, dtype: WeightDType) -> Result<FileBuilder<'static>, ImportError> {
    let mut b = GraphBuilder::new(ckpt, dtype);
    let table_shape = shape(&b, "pe.embedding.weight")?;
    let in_shape = shape(&b, "encoders.0.0.ln.weight")?;
    if table_shape.len() != 2 || in_shape.len() != 3 {
        return Err(ImportError::Checkpoint {
            origin: b.ckpt().source.clone(),
            detail: "pe.embedding.weight must be [T, dim] and encoders.0.0.ln.weight [C, H, W]".into(),
        });
    }
    let (steps, pe_dim) = (table_shape[0], table_shape[1]);
    let mut channels = Vec::new();
    while let Some(s) = b.ckpt().shape(&format!("encoders.{}.0.conv1.weight", channels.len())) {
        channels.push(s[0]);
    }
    channels.extend(b.ckpt().shape("mid.0.conv1.weight").map(|s| s[0]));
    let x = b.input(InputKind::Sample {
        channels: in_shape[0] as u32,
        height: in_shape[1] as u32,
        width: in_shape[2] as u32,
    });
    let t = b.input(InputKind::Timestep);
    let table = b.param("pe.embedding.weight", &table_shape, true)?;
    let te = b.node("pe", Op::TimestepEmbedding(TimestepEmbedding::Table { dim: pe_dim as u32, table }), &[t]);

    let mut h = x;
    let mut skips = Vec::new();
    let mut level = 0;
    while b.ckpt().has(&format!("encoders.{level}.0.ln.weight")) {
        let p = linear_unit(&mut b, &format!("pe_linears_en.{level}.0"), te)?;
        let p = b.node(&format!("pe_linears_en.{level}.1"), Op::Relu, &[p]);
        let p = linear_unit(&mut b, &format!("pe_linears_en.{level}.2"), p)?;
        h = b.node(&format!("encoders.{level}.pe_add"), Op::Add, &[h, p]);
        h = unet_block(&mut b, &format!("encoders.{level}.0"), h)?;
        h = unet_block(&mut b, &format!("encoders.{level}.1"), h)?;
        skips.push(h);
        let c = shape(&b, &format!("downs.{level}.weight"))?[0];
        b.begin_unit(&format!("downs.{level}"), UnitKind::Layer);
        h = b.conv(&format!("downs.{level}"), h, c, c, 2, 2, Padding::default())?;
        b.end_unit();
        level += 1;
    }
    let p = linear_unit(&mut b, "pe_mid", te)?;
    h = b.node("mid.pe_add", Op::Add, &[h, p]);
    h = unet_block(&mut b, "mid.0", h)?;
    h = unet_block(&mut b, "mid.1", h)?;
    for i in 0..level {
        let p = linear_unit(&mut b, &format!("pe_linears_de.{i}"), te)?;
        let ws = shape(&b, &format!("ups.{i}.weight"))?;
        if ws.len() != 4 {
            return Err(ImportError::Shape { key: format!("ups.{i}.weight"), expected: vec![0, 0, 2, 2], found: ws });
        }
        let (cin, cout) = (ws[0], ws[1]);
        b.begin_unit(&format!("ups.{i}"), UnitKind::Layer);
        let weight = b.param(&format!("ups.{i}.weight"), &[cin, cout, 2, 2], true)?;
        let bias = Some(b.param(&format!("ups.{i}.bias"), &[cout], false)?);
        let op = Op::ConvTranspose2d(ConvTranspose2d {
            in_channels: cin as u32,
            out_channels: cout as u32,
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            output_padding: [0, 0],
            weight,
            bias,
        });
        h = b.node(&format!("ups.{i}"), op, &[h]);
        b.end_unit();
        let skip = skips.pop().expect("one skip per level");
        h = b.node(&format!("decoders.{i}.pad"), Op::Pad(Pad::MatchSpatial), &[h, skip]);
        h = b.node(&format!("decoders.{i}.concat"), Op::Concat { axis: 1 }, &[skip, h]);
        h = b.node(&format!("decoders.{i}.pe_add"), Op::Add, &[h, p]);
        h = unet_block(&mut b, &format!("decoders.{i}.0"), h)?;
        h = unet_block(&mut b, &format!("decoders.{i}.1"), h)?;
    }
    let ow = shape(&b, "conv_out.weight")?;
    if ow.len() != 4 {
        return Err(ImportError::Shape { key: "conv_out.weight".into(), expected: vec![0, 0, 3, 3], found: ow });
    }
    b.begin_unit("conv_out", UnitKind::Layer);
    let out = b.conv("conv_out", h, ow[1], ow[0], 3, 1, Padding::uniform(1))?;
    b.end_unit();

    let mut meta = edadm_format::Metadata::new();
    meta.insert(keys::MODEL_FAMILY, "mnist-unet");
    meta.insert(
        keys::MODEL_CONFIG,
        format!(r#"{{"channels":{channels:?},"pe_dim":{pe_dim},"n_steps":{steps},"residual":true}}"#),
    );
    // Measured (docs/RESULTS.md, "mnist-unet's data range"): its DDIM samples put the
    // background at 0 (median −0.005, nothing below −0.21) and strokes at 1, like MNIST scaled to
    // [0, 1] — not [-1, 1] as the upstream loader suggests; FID 31.3 read as [0, 1] against
    // the MNIST test split.
    meta.insert(keys::MODEL_DATA_RANGE, vec![0.0, 1.0]);
    meta.insert(keys::SCHEDULE_KIND, "linear");
    meta.insert(keys::SCHEDULE_TIMESTEPS, steps as u64);
    meta.insert(keys::SCHEDULE_BETAS, edadm_runtime::sampler::linear_betas(1e-4, 0.02, steps));
    b.finish(out, Prediction::Epsilon, meta)
}
