//! Element-wise ops (activations, `Add`, `Mul`) lowered to steps. An activation after a
//! GroupNorm and an `Add` after an integer conv are fused later (`fuse.rs`).

use super::super::*;
use super::{Cx, Lowered};

/// The step of an element-wise node, its output shape and its scratch floats.
pub(super) fn build<'m>(cx: &Cx<'_, 'm>) -> Lowered<'m> {
    let Cx { node, ins, .. } = *cx;
    Ok(match &node.op {
        Op::Silu | Op::Relu | Op::Sigmoid | Op::Gelu(_) => {
            let act = crate::convert::activation(&node.op).expect("activation op");
            (Step::Act { x: cx.v(0), act }, ins[0].clone(), 0)
        }
        Op::Add | Op::Mul => {
            let (a, b) = (ins[0], ins[1]);
            let op = if matches!(node.op, Op::Add) { Binary::Add } else { Binary::Mul };
            let total: usize = a.iter().product();
            let (n, c, inner) = if a == b {
                (1, 1, total)
            } else if a.len() >= 3 && b.len() == 2 && a[..2] == b[..] {
                (a[0], a[1], a[2..].iter().product())
            } else {
                return Err(shape_err(node, format!("cannot combine shapes {a:?} and {b:?}")));
            };
            (Step::Binary { op, a: cx.v(0), b: cx.v(1), n, c, inner }, a.clone(), 0)
        }
        _ => unreachable!("{} is not element-wise", node.op.name()),
    })
}
