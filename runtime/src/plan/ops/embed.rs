//! The timestep embedding (sinusoidal, or a stored table) lowered to a step.

use super::super::*;
use super::{Cx, Lowered};

/// The step of a timestep embedding node, its output shape and its scratch floats.
pub(super) fn build<'m>(cx: &Cx<'_, 'm>) -> Lowered<'m> {
    let Cx { model, node, ins, .. } = *cx;
    Ok(match &node.op {
        Op::TimestepEmbedding(te) => {
            let [n] = <[usize; 1]>::try_from(ins[0].as_slice())
                .map_err(|_| shape_err(node, format!("the timestep must be [N], got {:?}", ins[0])))?;
            let dim = te.dim() as usize;
            let step = match *te {
                TimestepEmbedding::Sinusoidal { order, denominator, max_period, .. } => {
                    let (order, half_minus_one) = crate::convert::sinusoid(order, denominator);
                    Step::Sinusoid { t: cx.v(0), dim, order, half_minus_one, max_period }
                }
                TimestepEmbedding::Table { table, .. } => {
                    let rows = model.file().tensor(table).expect("validated").shape[0] as usize;
                    Step::Table { t: cx.v(0), dim, rows, table: floats(model, table) }
                }
            };
            (step, vec![n, dim], 0)
        }
        _ => unreachable!("{} is not a timestep embedding", node.op.name()),
    })
}
