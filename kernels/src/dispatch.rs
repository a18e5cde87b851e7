//! Choosing kernel variants: once at start-up from the CPU's features, or forced with
//! `EDADM_KERNELS=ref|avx2|avxvnni|avx512|avx512vnni|neon|dotprod|i8mm`.

use std::sync::OnceLock;

use crate::gemm::SgemmKernel;
use crate::qgemm::QgemmKernel;

/// Instruction-set tiers. A tier fixes the variant of every op: its f32 GEMM, its u8×i8 GEMM
/// and the target features its element-wise loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Portable scalar code: the reference, always available.
    Reference,
    /// x86-64 AVX2 + FMA (int8 through exact `vpmaddwd` on widened operands).
    Avx2,
    /// x86-64 AVX2 + FMA + AVX-VNNI (256-bit VEX `vpdpbusd`; Alder Lake and later).
    AvxVnni,
    /// x86-64 AVX-512F without VNNI (int8 as in `Avx2`).
    Avx512,
    /// x86-64 AVX-512F + AVX-512 VNNI (512-bit `vpdpbusd`).
    Avx512Vnni,
    /// aarch64 Advanced SIMD (int8 with `smull` + `sadalp`; Cortex-A53/A72).
    Neon,
    /// aarch64 with the dot-product extension (`sdot`; Cortex-A76, Raspberry Pi 5).
    Dotprod,
    /// aarch64 with the int8 matrix-multiply extension (`smmla`; Neoverse V1/N2, A710…).
    I8mm,
}

impl Tier {
    /// Every tier, in order.
    pub const ALL: [Tier; 8] = [
        Tier::Reference,
        Tier::Avx2,
        Tier::AvxVnni,
        Tier::Avx512,
        Tier::Avx512Vnni,
        Tier::Neon,
        Tier::Dotprod,
        Tier::I8mm,
    ];

    /// The name used by `EDADM_KERNELS` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Reference => "ref",
            Tier::Avx2 => "avx2",
            Tier::AvxVnni => "avxvnni",
            Tier::Avx512 => "avx512",
            Tier::Avx512Vnni => "avx512vnni",
            Tier::Neon => "neon",
            Tier::Dotprod => "dotprod",
            Tier::I8mm => "i8mm",
        }
    }

    /// Parses a tier name.
    pub fn from_name(s: &str) -> Option<Tier> {
        match s {
            "reference" | "scalar" => Some(Tier::Reference),
            _ => Tier::ALL.into_iter().find(|t| t.name() == s),
        }
    }

    /// The CPU features the tier needs, for messages.
    pub fn features(self) -> &'static str {
        match self {
            Tier::Reference => "none",
            Tier::Avx2 => "avx2, fma",
            Tier::AvxVnni => "avx2, fma, avxvnni",
            Tier::Avx512 => "avx512f, avx2, fma",
            Tier::Avx512Vnni => "avx512f, avx512vnni, avx2, fma",
            Tier::Neon => "neon",
            Tier::Dotprod => "neon, dotprod",
            Tier::I8mm => "neon, dotprod, i8mm",
        }
    }

    /// Whether this CPU can run the tier.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            match self {
                Tier::Reference => true,
                Tier::Avx2 => avx2,
                Tier::AvxVnni => avx2 && has!("avxvnni"),
                Tier::Avx512 => avx2 && has!("avx512f"),
                Tier::Avx512Vnni => avx2 && has!("avx512f") && has!("avx512vnni"),
                _ => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            match self {
                Tier::Reference => true,
                Tier::Neon => has!("neon"),
                Tier::Dotprod => has!("neon") && has!("dotprod"),
                Tier::I8mm => has!("neon") && has!("dotprod") && has!("i8mm"),
                _ => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            self == Tier::Reference
        }
    }

    /// Every tier compiled for this architecture, best last.
    pub fn compiled() -> &'static [Tier] {
        #[cfg(target_arch = "x86_64")]
        return &[Tier::Reference, Tier::Avx2, Tier::AvxVnni, Tier::Avx512, Tier::Avx512Vnni];
        #[cfg(target_arch = "aarch64")]
        return &[Tier::Reference, Tier::Neon, Tier::Dotprod, Tier::I8mm];
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        return &[Tier::Reference];
    }

    /// The best tier this CPU runs.
    pub fn best() -> Tier {
        Tier::compiled().iter().rev().copied().find(|t| t.available()).unwrap_or(Tier::Reference)
    }

    /// The tier whose loops the element-wise kernels are compiled for.
    pub(crate) fn simd(self) -> Tier {
        match self {
            Tier::AvxVnni => Tier::Avx2,
            Tier::Avx512Vnni => Tier::Avx512,
            Tier::Dotprod | Tier::I8mm => Tier::Neon,
            t => t,
        }
    }
}

/// The kernel variants in use, one per op family. Only constructible for a tier this CPU runs.
#[derive(Debug)]
pub struct Kernels {
    tier: Tier,
    sgemm: SgemmKernel,
    qgemm: QgemmKernel,
    /// A faster u8×i8 microkernel that is exact only for weights in `[−64, 63]` (7- and 4-bit
    /// layers), where the tier has one.
    qgemm_w7: Option<QgemmKernel>,
    /// A faster one still, exact only for weights in `[−8, 7]` (4-bit layers).
    qgemm_w4: Option<QgemmKernel>,
}

impl Kernels {
    /// The table for a tier; `None` if this CPU cannot run it.
    pub fn for_tier(tier: Tier) -> Option<Kernels> {
        if !tier.available() {
            return None;
        }
        let sgemm = match tier.simd() {
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => crate::x86_64::SGEMM_AVX512,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => crate::x86_64::SGEMM_AVX2,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => crate::aarch64::SGEMM_NEON,
            _ => crate::reference::SGEMM_REF,
        };
        let qgemm = match tier {
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512Vnni => crate::x86_64::QGEMM_AVX512VNNI,
            #[cfg(target_arch = "x86_64")]
            Tier::AvxVnni => crate::x86_64::QGEMM_AVXVNNI,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 | Tier::Avx512 => crate::x86_64::QGEMM_AVX2,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => crate::aarch64::QGEMM_NEON,
            #[cfg(target_arch = "aarch64")]
            Tier::Dotprod => crate::aarch64::QGEMM_DOTPROD,
            #[cfg(target_arch = "aarch64")]
            Tier::I8mm => crate::aarch64::QGEMM_I8MM,
            _ => crate::reference::QGEMM_REF,
        };
        let qgemm_w7 = match tier {
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 | Tier::Avx512 => Some(crate::x86_64::QGEMM_AVX2_W7),
            _ => None,
        };
        let qgemm_w4 = match tier {
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 | Tier::Avx512 => Some(crate::x86_64::QGEMM_AVX2_W4),
            _ => None,
        };
        Some(Kernels { tier, sgemm, qgemm, qgemm_w7, qgemm_w4 })
    }

    /// The tier the table was built for.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The f32 GEMM microkernel (convolutions, linear layers, attention).
    pub fn sgemm(&self) -> &SgemmKernel {
        &self.sgemm
    }

    /// The u8×i8 GEMM microkernel (any i8 weights; attention's run-time operands).
    pub fn qgemm(&self) -> &QgemmKernel {
        &self.qgemm
    }

    /// The u8×i8 microkernel for the weights `w`: on tiers without VNNI (AVX2, AVX-512F), a
    /// `vpmaddubsw` kernel when every weight lies in `[−64, 63]` — exact there, and about 1.7×
    /// the multiply rate — and one that also sums eight k-groups in i16 when every weight lies
    /// in `[−8, 7]`; else [`Kernels::qgemm`]. Every variant gives the same bits.
    pub fn qgemm_for(&self, w: &[i8]) -> &QgemmKernel {
        let (lo, hi) = w.iter().fold((0i8, 0i8), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        match (&self.qgemm_w4, &self.qgemm_w7) {
            (Some(k4), _) if lo >= -8 && hi <= 7 => k4,
            (_, Some(k7)) if lo >= -64 && hi <= 63 => k7,
            _ => &self.qgemm,
        }
    }

    /// Every u8×i8 microkernel of the tier with the weight range it is exact for.
    pub fn qgemm_variants(&self) -> Vec<(&QgemmKernel, [i8; 2])> {
        let mut v = vec![(&self.qgemm, [i8::MIN, i8::MAX])];
        v.extend(self.qgemm_w7.as_ref().map(|k| (k, [-64, 63])));
        v.extend(self.qgemm_w4.as_ref().map(|k| (k, [-8, 7])));
        v
    }

    /// The SIMD tier of quantization, norms, softmax and element-wise ops.
    pub fn simd_name(&self) -> &'static str {
        self.tier.simd().name()
    }

    /// The variant each op runs, as `(ops, variant)` pairs.
    pub fn ops(&self) -> [(&'static str, &'static str); 5] {
        [
            ("f32 conv/linear/attention", self.sgemm.name),
            ("u8×i8 conv/linear/attention", self.qgemm.name),
            ("u8×i8 conv/linear, weights in [−64, 63]", self.qgemm_w7.as_ref().unwrap_or(&self.qgemm).name),
            (
                "u8×i8 conv/linear, weights in [−8, 7]",
                self.qgemm_w4.as_ref().or(self.qgemm_w7.as_ref()).unwrap_or(&self.qgemm).name,
            ),
            ("quantize, norms, softmax, element-wise", self.tier.simd().name()),
        ]
    }

    /// What was chosen, per op: `tier=avx512vnni; f32 conv/linear/attention: avx512_sgemm_12x32;
    /// …`.
    pub fn describe(&self) -> String {
        let mut s = format!("tier={}", self.tier.name());
        for (ops, variant) in self.ops() {
            s.push_str(&format!("; {ops}: {variant}"));
        }
        s
    }
}

/// Why `EDADM_KERNELS` could not be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// Not a tier name.
    #[error("EDADM_KERNELS={0:?} is not a kernel tier (ref, avx2, avxvnni, avx512, avx512vnni, neon, dotprod, i8mm)")]
    Unknown(String),
    /// A tier this CPU or build lacks.
    #[error("EDADM_KERNELS={0}: this CPU or build cannot run that tier")]
    Unavailable(&'static str),
}

/// The table for `EDADM_KERNELS` if set, else the best tier of this CPU.
pub fn select() -> Result<Kernels, DispatchError> {
    match std::env::var("EDADM_KERNELS") {
        Ok(name) if !name.is_empty() => {
            let tier = Tier::from_name(&name).ok_or(DispatchError::Unknown(name))?;
            Kernels::for_tier(tier).ok_or(DispatchError::Unavailable(tier.name()))
        }
        _ => Ok(Kernels::for_tier(Tier::best()).unwrap_or_else(reference)),
    }
}

/// The scalar reference table.
pub fn reference() -> Kernels {
    Kernels {
        tier: Tier::Reference,
        sgemm: crate::reference::SGEMM_REF,
        qgemm: crate::reference::QGEMM_REF,
        qgemm_w7: None,
        qgemm_w4: None,
    }
}

static KERNELS: OnceLock<Result<Kernels, DispatchError>> = OnceLock::new();

/// The process-wide table, chosen on first use by [`select`].
pub fn kernels() -> Result<&'static Kernels, DispatchError> {
    KERNELS.get_or_init(select).as_ref().map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names_round_trip_and_unknown_names_are_refused() {
        for t in Tier::ALL {
            assert_eq!(Tier::from_name(t.name()), Some(t));
        }
        assert_eq!(Tier::from_name("scalar"), Some(Tier::Reference));
        assert_eq!(Tier::from_name("AVX2"), None);
        assert_eq!(Tier::from_name("sse4"), None);
    }

    #[test]
    fn every_available_tier_describes_its_variants() {
        assert!(Tier::Reference.available() && Tier::compiled().contains(&Tier::best()));
        for &t in Tier::compiled() {
            match Kernels::for_tier(t) {
                Some(k) => {
                    assert_eq!(k.tier(), t);
                    let d = k.describe();
                    assert!(
                        d.starts_with(&format!("tier={}", t.name()))
                            && d.contains(k.qgemm().name)
                            && d.contains(k.sgemm().name),
                        "{d}"
                    );
                }
                None => println!("skipped: {} (this CPU lacks {})", t.name(), t.features()),
            }
        }
        // Tiers of the other architecture never construct.
        for t in Tier::ALL.into_iter().filter(|t| !Tier::compiled().contains(t)) {
            assert!(Kernels::for_tier(t).is_none());
        }
    }
}
