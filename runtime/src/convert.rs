//! The one mapping from the format's records to the kernels' parameters, shared by the runtime's
//! planner and the quantizer's interpreter (so the two cannot drift apart).

use edadm_format::graph::{ActQuant, FreqDenominator, GeluApprox, Op, SinusoidOrder};
use edadm_kernels::ops::act::Activation;
use edadm_kernels::ops::elementwise::SinusoidOrder as KSinOrder;
use edadm_kernels::ops::quant::ActQ;

/// The kernels' quantizer of an activation record.
pub fn act_q(a: &ActQuant) -> ActQ {
    ActQ { delta: a.delta, zero_point: a.zero_point, bits: a.bits }
}

/// The kernels' activation of an element-wise activation op, `None` for any other op.
pub fn activation(op: &Op) -> Option<Activation> {
    Some(match op {
        Op::Silu => Activation::Silu,
        Op::Relu => Activation::Relu,
        Op::Sigmoid => Activation::Sigmoid,
        Op::Gelu(GeluApprox::Erf) => Activation::GeluErf,
        Op::Gelu(GeluApprox::Tanh) => Activation::GeluTanh,
        _ => return None,
    })
}

/// The kernels' sinusoid layout and whether the frequencies divide by `dim/2 − 1`.
pub fn sinusoid(order: SinusoidOrder, denominator: FreqDenominator) -> (KSinOrder, bool) {
    let order = match order {
        SinusoidOrder::SinCos => KSinOrder::SinCos,
        SinusoidOrder::CosSin => KSinOrder::CosSin,
    };
    (order, denominator == FreqDenominator::HalfMinusOne)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_map_to_the_kernels_parameters() {
        let a = act_q(&ActQuant { delta: 0.5, zero_point: 7, bits: 6 });
        assert_eq!((a.delta, a.zero_point, a.bits), (0.5, 7, 6));
        assert_eq!(activation(&Op::Gelu(GeluApprox::Tanh)), Some(Activation::GeluTanh));
        assert_eq!(activation(&Op::Add), None);
        assert_eq!(sinusoid(SinusoidOrder::CosSin, FreqDenominator::HalfMinusOne), (KSinOrder::CosSin, true));
    }
}
