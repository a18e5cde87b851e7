//! The weighted ops (`Conv2d`, `ConvTranspose2d`, `Linear`) on candle tensors: with the hooks'
//! weights and input transforms (fake quantization, AdaRound, QDrop), or in the integer form
//! (`Σ_g op(levels_g)·scale_g + bias`) that matches the runtime's integer kernels.

use candle_core::Tensor;
use edadm_format::graph::Op;

use super::super::{Hooks, Net};
use crate::error::{QuantError, Result};

/// The node's output.
pub(in crate::net) fn forward(net: &Net, ni: usize, x: Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
    let node = &net.graph.nodes[ni];
    let p = &net.params[ni];
    let wbias = hooks.bias(ni).or_else(|| p.bias.clone());
    let weight = || -> Result<Tensor> {
        match hooks.weight(ni)? {
            Some(w) => Ok(w),
            None => Ok(p.weight.clone().expect("weighted node has a weight")),
        }
    };
    // The input after the hooks, group by group along channel axis `axis`.
    let grouped_input = |x: Tensor, axis: usize| -> Result<Tensor> {
        let starts = hooks.groups(ni);
        if starts.len() <= 1 {
            return hooks.input(ni, 0, x);
        }
        let c = x.dim(axis)?;
        let mut parts = Vec::with_capacity(starts.len());
        for (g, &s) in starts.iter().enumerate() {
            let e = starts.get(g + 1).copied().unwrap_or(c);
            parts.push(hooks.input(ni, g, x.narrow(axis, s, e - s)?)?);
        }
        Ok(Tensor::cat(&parts, axis)?)
    };
    if let Some(groups) = hooks.integer(ni) {
        return match &node.op {
            Op::Conv2d(c) => {
                let pd = c.padding;
                if c.stride[0] != c.stride[1] || c.groups != 1 {
                    return Err(QuantError::Invalid(format!("{}: integer form of this convolution", node.name)));
                }
                let pads = [pd.top, pd.bottom, pd.left, pd.right].map(|v| v as usize);
                if c.stride == [1, 1]
                    && c.dilation == [1, 1]
                    && crate::conv_op::supported(1, 1, 1, c.kernel.map(|v| v as usize), pads)
                {
                    let conv = |lv: &Tensor, w: &Tensor| -> Result<Tensor> { Ok(crate::conv_op::conv2d(lv, w, pads)?) };
                    return integer_sum(hooks, ni, &x, 1, groups, wbias.as_ref(), &conv);
                }
                let conv = |lv: &Tensor, w: &Tensor| -> Result<Tensor> {
                    let lv = lv.pad_with_zeros(2, pd.top as usize, pd.bottom as usize)?;
                    let lv = lv.pad_with_zeros(3, pd.left as usize, pd.right as usize)?;
                    Ok(lv.conv2d(w, 0, c.stride[0] as usize, c.dilation[0] as usize, 1)?)
                };
                integer_sum(hooks, ni, &x, 1, groups, wbias.as_ref(), &conv)
            }
            Op::ConvTranspose2d(c) => {
                let conv = |lv: &Tensor, w: &Tensor| -> Result<Tensor> {
                    Ok(lv.conv_transpose2d(
                        w,
                        c.padding[0] as usize,
                        c.output_padding[0] as usize,
                        c.stride[0] as usize,
                        1,
                    )?)
                };
                integer_sum(hooks, ni, &x, 1, groups, wbias.as_ref(), &conv)
            }
            Op::Linear(_) => {
                let lin = |lv: &Tensor, w: &Tensor| -> Result<Tensor> { Ok(lv.broadcast_matmul(&w.t()?)?) };
                let last = x.rank() - 1;
                integer_sum(hooks, ni, &x, last, groups, wbias.as_ref(), &lin)
            }
            _ => Err(QuantError::Invalid(format!("{}: integer form of a {}", node.name, node.op.name()))),
        };
    }
    Ok(match &node.op {
        Op::Conv2d(c) => {
            let x = grouped_input(x, 1)?;
            let pd = c.padding;
            let pads = [pd.top, pd.bottom, pd.left, pd.right].map(|v| v as usize);
            let kernel = c.kernel.map(|v| v as usize);
            if c.stride == [1, 1]
                && crate::conv_op::supported(1, c.dilation[0] as usize, c.groups as usize, kernel, pads)
                && c.dilation == [1, 1]
            {
                let y = crate::conv_op::conv2d(&x, &weight()?, pads)?;
                return add_channel_bias(y, wbias.as_ref());
            }
            let (x, pad) = if pd.top == pd.bottom && pd.left == pd.right && pd.top == pd.left {
                (x, pd.top as usize)
            } else {
                let x = x.pad_with_zeros(2, pd.top as usize, pd.bottom as usize)?;
                (x.pad_with_zeros(3, pd.left as usize, pd.right as usize)?, 0)
            };
            if c.stride[0] != c.stride[1] || c.dilation[0] != c.dilation[1] {
                return Err(QuantError::Invalid(format!("{}: anisotropic stride/dilation", node.name)));
            }
            let y = x.conv2d(&weight()?, pad, c.stride[0] as usize, c.dilation[0] as usize, c.groups as usize)?;
            add_channel_bias(y, wbias.as_ref())?
        }
        Op::ConvTranspose2d(c) => {
            let x = grouped_input(x, 1)?;
            if c.stride[0] != c.stride[1] || c.padding[0] != c.padding[1] || c.output_padding[0] != c.output_padding[1]
            {
                return Err(QuantError::Invalid(format!("{}: anisotropic transposed convolution", node.name)));
            }
            let y = x.conv_transpose2d(
                &weight()?,
                c.padding[0] as usize,
                c.output_padding[0] as usize,
                c.stride[0] as usize,
                1,
            )?;
            add_channel_bias(y, wbias.as_ref())?
        }
        Op::Linear(_) => {
            let last = x.rank() - 1;
            let x = grouped_input(x, last)?;
            let w = weight()?;
            let y = x.broadcast_matmul(&w.t()?)?;
            match &wbias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        }
        _ => unreachable!("{} is not a weighted op", node.op.name()),
    })
}

/// `Σ_g op(levels_g)·scale_g + bias` of the integer form.
fn integer_sum(
    hooks: &dyn Hooks,
    ni: usize,
    x: &Tensor,
    axis: usize,
    groups: &[(Tensor, Tensor)],
    bias: Option<&Tensor>,
    op: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let starts = hooks.groups(ni);
    let c = x.dim(axis)?;
    let mut y: Option<Tensor> = None;
    for (g, (w, scale)) in groups.iter().enumerate() {
        let s0 = starts[g];
        let e0 = starts.get(g + 1).copied().unwrap_or(c);
        let lv = hooks.levels(ni, g, x.narrow(axis, s0, e0 - s0)?)?;
        let acc = op(&lv, w)?;
        let mut shape = vec![1; acc.rank()];
        shape[if axis == acc.rank() - 1 { axis } else { 1 }] = scale.dim(0)?;
        let t = acc.broadcast_mul(&scale.reshape(shape.clone())?)?;
        y = Some(match y {
            Some(prev) => (t + prev)?,
            None => match bias {
                Some(b) => t.broadcast_add(&b.reshape(shape)?)?,
                None => t,
            },
        });
    }
    y.ok_or_else(|| QuantError::Invalid(format!("node {ni}: integer form without groups")))
}

fn add_channel_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) if y.device().is_cpu() && y.dtype() == candle_core::DType::F32 && y.rank() == 4 => {
            crate::norm_op::add_channel_bias(&y, b)?
        }
        Some(b) => {
            let c = b.dim(0)?;
            y.broadcast_add(&b.reshape((1, c, 1, 1))?)?
        }
        None => y,
    })
}
