//! The timestep embedding — `TimestepEmbedding` (sinusoidal or a stored table): attributes,
//! attribute records (`docs/FORMAT.md` §5.3) and validation rules.

use super::super::codec::{code, tensor};
use super::super::validate::{Ctx, FLOAT, MAX_CHANNELS, bad, finite_positive, no_quant, positive};
use super::super::{Node, Op, TensorId};
use crate::codec::{Cursor, Encoder};
use crate::error::{FormatError, GraphProblem};

/// Order of the two halves of a sinusoidal embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SinusoidOrder {
    /// `[sin(t·f), cos(t·f)]` (DDPM / pytorch_diffusion).
    SinCos,
    /// `[cos(t·f), sin(t·f)]` (openaimodel / LDM / SD).
    CosSin,
}

/// Denominator `d` of the frequencies `f_i = exp(−ln(max_period)·i/d)`, `i = 0..half`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FreqDenominator {
    /// `d = half − 1` (DDPM).
    HalfMinusOne,
    /// `d = half` (openaimodel).
    Half,
}

/// Attributes of [`Op::TimestepEmbedding`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimestepEmbedding {
    /// `half = dim/2` frequencies; an odd `dim` gets a trailing zero column.
    Sinusoidal {
        /// Output width.
        dim: u32,
        /// Order of the halves.
        order: SinusoidOrder,
        /// Frequency denominator.
        denominator: FreqDenominator,
        /// Usually 10000.
        max_period: f32,
    },
    /// Row `t` of a stored table `[T, dim]`; `t` must be an integer in `[0, T)`.
    Table {
        /// Output width.
        dim: u32,
        /// The table.
        table: TensorId,
    },
}

impl TimestepEmbedding {
    /// Output width.
    pub fn dim(&self) -> u32 {
        match *self {
            TimestepEmbedding::Sinusoidal { dim, .. } | TimestepEmbedding::Table { dim, .. } => dim,
        }
    }
}

pub(super) fn encode(e: &mut Encoder, op: &Op) {
    match op {
        Op::TimestepEmbedding(TimestepEmbedding::Sinusoidal { dim, order, denominator, max_period }) => {
            e.u32(*dim);
            e.u32(0);
            e.u32(match order {
                SinusoidOrder::SinCos => 0,
                SinusoidOrder::CosSin => 1,
            });
            e.u32(match denominator {
                FreqDenominator::HalfMinusOne => 0,
                FreqDenominator::Half => 1,
            });
            e.f32(*max_period);
        }
        Op::TimestepEmbedding(TimestepEmbedding::Table { dim, table }) => {
            e.u32(*dim);
            e.u32(1);
            e.u32(table.0);
        }
        _ => {}
    }
}

pub(super) fn decode(c: &mut Cursor<'_>, op_code: u16) -> Option<Result<Op, FormatError>> {
    let op = || -> Result<Op, FormatError> {
        let dim = c.u32()?;
        Ok(Op::TimestepEmbedding(match code(c, "timestep embedding kind", 1)? {
            0 => TimestepEmbedding::Sinusoidal {
                dim,
                order: match code(c, "sinusoid order", 1)? {
                    0 => SinusoidOrder::SinCos,
                    _ => SinusoidOrder::CosSin,
                },
                denominator: match code(c, "frequency denominator", 1)? {
                    0 => FreqDenominator::HalfMinusOne,
                    _ => FreqDenominator::Half,
                },
                max_period: c.f32()?,
            },
            _ => TimestepEmbedding::Table { dim, table: tensor(c)? },
        }))
    };
    (op_code == 15).then(op)
}

pub(super) fn check(cx: &Ctx<'_>, n: &Node) -> Result<(), GraphProblem> {
    let name = n.op.name();
    if let Op::TimestepEmbedding(te) = &n.op {
        positive(name, "dim", te.dim(), MAX_CHANNELS)?;
        match *te {
            TimestepEmbedding::Sinusoidal { dim, denominator, max_period, .. } => {
                finite_positive(name, "max_period", max_period)?;
                let min = match denominator {
                    FreqDenominator::HalfMinusOne => 4,
                    FreqDenominator::Half => 2,
                };
                if dim < min {
                    return Err(bad(name, "dim", dim, "too small for the frequency formula"));
                }
            }
            TimestepEmbedding::Table { dim, table } => {
                let m = cx.tensor("table", table, FLOAT, "f32 or f16", None)?;
                if m.shape.len() != 2 || m.shape[0] == 0 || m.shape[1] != u64::from(dim) {
                    return Err(GraphProblem::TensorShape {
                        role: "table",
                        tensor: table.0,
                        found: m.shape.to_vec(),
                        expected: vec![0, u64::from(dim)],
                    });
                }
            }
        }
    }
    no_quant(n)
}
