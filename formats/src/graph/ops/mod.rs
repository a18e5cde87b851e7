//! The graph's ops, one file per op family. Each family file holds its ops' attribute types,
//! their attribute records (encode and decode, `docs/FORMAT.md` §5.3), their validation rules
//! (§5.6: attribute ranges, tensor references, which quantization record they may carry) and
//! their input counts. The [`Op`] enum itself, with the op codes and names, is `op.rs`; the
//! exhaustive [`Op::family`] match is what makes a new variant choose its family (the build
//! fails until it does). `docs/ADDING_AN_OP.md` is the checklist.

mod attention;
mod embed;
mod norm;
mod pointwise;
mod shape;
mod weighted;

pub use attention::{Attention, AttentionLayout, ScalePlacement};
pub use embed::{FreqDenominator, SinusoidOrder, TimestepEmbedding};
pub use norm::{GroupNorm, LayerNorm, LayerNormAxes};
pub use pointwise::GeluApprox;
pub use shape::{AvgPool2d, Pad};
pub use weighted::{Conv2d, ConvTranspose2d, Linear};

use super::codec::unknown;
use super::validate::Ctx;
use super::{Node, Op, OpFamily};
use crate::codec::{Cursor, Encoder};
use crate::error::{FormatError, GraphProblem};

/// Writes `op`'s attribute record.
pub(crate) fn encode(e: &mut Encoder, op: &Op) {
    match op.family() {
        OpFamily::Weighted => weighted::encode(e, op),
        OpFamily::Norm => norm::encode(e, op),
        OpFamily::Pointwise => pointwise::encode(e, op),
        OpFamily::Shape => shape::encode(e, op),
        OpFamily::Embed => embed::encode(e, op),
        OpFamily::Attention => attention::encode(e, op),
    }
}

/// A family's decoder: the op with this code read from the record, `None` for another family's code.
type Decode = fn(&mut Cursor<'_>, u16) -> Option<Result<Op, FormatError>>;

/// Every family's decoder.
const DECODERS: [Decode; 6] =
    [weighted::decode, norm::decode, pointwise::decode, shape::decode, embed::decode, attention::decode];

/// Reads the attribute record of the op with code `op_code` (at `op_at`, for the error).
pub(crate) fn decode(c: &mut Cursor<'_>, op_code: u16, op_at: u64) -> Result<Op, FormatError> {
    for decode in DECODERS {
        if let Some(op) = decode(c, op_code) {
            return op;
        }
    }
    Err(unknown("op", op_code.into(), op_at))
}

/// The rules of a node's attributes, tensor references and quantization record.
pub(crate) fn check(cx: &Ctx<'_>, n: &Node) -> Result<(), GraphProblem> {
    match n.op.family() {
        OpFamily::Weighted => weighted::check(cx, n),
        OpFamily::Norm => norm::check(cx, n),
        OpFamily::Pointwise => pointwise::check(n),
        OpFamily::Shape => shape::check(n),
        OpFamily::Embed => embed::check(cx, n),
        OpFamily::Attention => attention::check(n),
    }
}

/// Whether `n` inputs suit `op`: one for the weighted ops, the norms and the timestep embedding;
/// the other families say.
pub(crate) fn arity(op: &Op, n: usize) -> Result<(), GraphProblem> {
    let (ok, expected) = match op.family() {
        OpFamily::Weighted | OpFamily::Norm | OpFamily::Embed => (n == 1, "1"),
        OpFamily::Pointwise => pointwise::arity(op, n),
        OpFamily::Shape => shape::arity(op, n),
        OpFamily::Attention => attention::arity(op, n),
    };
    if ok { Ok(()) } else { Err(GraphProblem::Arity { op: op.name(), expected, found: n }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every op code decodes in exactly one family, to an op of that code.
    #[test]
    fn every_code_belongs_to_one_family() {
        let zeros = [0u8; 64];
        for code in 0..=17u16 {
            let mut owners = 0;
            for decode in DECODERS {
                let mut c = Cursor::new(&zeros, 0, "test");
                if let Some(op) = decode(&mut c, code) {
                    owners += 1;
                    if let Ok(op) = op {
                        assert_eq!(op.code(), code);
                    }
                }
            }
            assert_eq!(owners, usize::from(code <= 16), "op code {code}");
        }
    }
}
