//! The element-wise ops — activations (`Silu`, `Relu`, `Gelu`, `Sigmoid`) and the binary `Add`,
//! `Mul`: attributes, attribute records (`docs/FORMAT.md` §5.3) and validation rules.

use super::super::codec::code;
use super::super::validate::no_quant;
use super::super::{Node, Op};
use crate::codec::{Cursor, Encoder};
use crate::error::{FormatError, GraphProblem};

/// The GELU variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeluApprox {
    /// `x·Φ(x)` with the exact error function.
    Erf,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    Tanh,
}

pub(super) fn encode(e: &mut Encoder, op: &Op) {
    if let Op::Gelu(a) = op {
        e.u32(match a {
            GeluApprox::Erf => 0,
            GeluApprox::Tanh => 1,
        });
    }
}

pub(super) fn decode(c: &mut Cursor<'_>, op_code: u16) -> Option<Result<Op, FormatError>> {
    Some(Ok(match op_code {
        5 => Op::Silu,
        6 => Op::Relu,
        7 => {
            return Some(code(c, "GELU approximation", 1).map(|a| {
                Op::Gelu(match a {
                    0 => GeluApprox::Erf,
                    _ => GeluApprox::Tanh,
                })
            }));
        }
        8 => Op::Sigmoid,
        9 => Op::Add,
        10 => Op::Mul,
        _ => return None,
    }))
}

/// No attribute has a rule; none carries a quantization record.
pub(super) fn check(n: &Node) -> Result<(), GraphProblem> {
    no_quant(n)
}

/// Activations take one input, `Add` and `Mul` two.
pub(super) fn arity(op: &Op, n: usize) -> (bool, &'static str) {
    match op {
        Op::Add | Op::Mul => (n == 2, "2"),
        _ => (n == 1, "1"),
    }
}
