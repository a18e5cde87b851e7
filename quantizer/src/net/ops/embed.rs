//! The timestep embedding on candle tensors (the sinusoid computed by the runtime's kernel).

use candle_core::Tensor;
use edadm_format::graph::{Op, TimestepEmbedding};

use super::super::Net;
use crate::error::Result;

/// The node's output.
pub(in crate::net) fn forward(net: &Net, ni: usize, x: Tensor) -> Result<Tensor> {
    let node = &net.graph.nodes[ni];
    let p = &net.params[ni];
    Ok(match &node.op {
        Op::TimestepEmbedding(te) => {
            let t: Vec<f32> = x.to_vec1()?;
            let dim = te.dim() as usize;
            match *te {
                TimestepEmbedding::Sinusoidal { order, denominator, max_period, .. } => {
                    let mut y = vec![0f32; t.len() * dim];
                    let (order, half_minus_one) = edadm_runtime::convert::sinusoid(order, denominator);
                    edadm_kernels::ops::elementwise::timestep_sinusoid(
                        &t,
                        dim,
                        order,
                        half_minus_one,
                        max_period,
                        &mut y,
                    );
                    Tensor::from_vec(y, (t.len(), dim), &net.device)?
                }
                TimestepEmbedding::Table { .. } => {
                    let table = p.weight.as_ref().expect("table");
                    let rows = table.dim(0)?;
                    let idx: Vec<u32> = t.iter().map(|&v| (v.round().max(0.0) as usize).min(rows - 1) as u32).collect();
                    table.index_select(&Tensor::from_vec(idx, t.len(), &net.device)?, 0)?
                }
            }
        }
        _ => unreachable!("{} is not a timestep embedding", node.op.name()),
    })
}
