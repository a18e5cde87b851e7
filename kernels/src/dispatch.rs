//! Choosing kernel variants: once at start-up from the CPU's features, or forced with
//! `EDADM_KERNELS=ref|avx2|avx512|neon`.

use std::sync::OnceLock;

use crate::gemm::SgemmKernel;

/// Instruction-set tiers a variant may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Portable scalar code: the reference, always available.
    Reference,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Tier {
    /// The name used by `EDADM_KERNELS` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Reference => "ref",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
        }
    }

    /// Parses a tier name.
    pub fn from_name(s: &str) -> Option<Tier> {
        Some(match s {
            "ref" | "reference" | "scalar" => Tier::Reference,
            "avx2" => Tier::Avx2,
            "avx512" => Tier::Avx512,
            "neon" => Tier::Neon,
            _ => return None,
        })
    }

    /// Whether this CPU can run the tier.
    pub fn available(self) -> bool {
        match self {
            Tier::Reference => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every tier compiled for this architecture, best last.
    pub fn compiled() -> &'static [Tier] {
        #[cfg(target_arch = "x86_64")]
        return &[Tier::Reference, Tier::Avx2, Tier::Avx512];
        #[cfg(target_arch = "aarch64")]
        return &[Tier::Reference, Tier::Neon];
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        return &[Tier::Reference];
    }

    /// The best tier this CPU runs.
    pub fn best() -> Tier {
        Tier::compiled().iter().rev().copied().find(|t| t.available()).unwrap_or(Tier::Reference)
    }
}

/// The kernel variants in use, one per op family. Only constructible for a tier this CPU runs.
#[derive(Debug)]
pub struct Kernels {
    tier: Tier,
    sgemm: SgemmKernel,
}

impl Kernels {
    /// The table for a tier; `None` if this CPU cannot run it.
    pub fn for_tier(tier: Tier) -> Option<Kernels> {
        if !tier.available() {
            return None;
        }
        let sgemm = match tier {
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => crate::x86_64::SGEMM_AVX512,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => crate::x86_64::SGEMM_AVX2,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => crate::aarch64::SGEMM_NEON,
            _ => crate::reference::SGEMM_REF,
        };
        Some(Kernels { tier, sgemm })
    }

    /// The tier the table was built for (element-wise kernels are compiled for it).
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The f32 GEMM microkernel (convolutions, linear layers, attention).
    pub fn sgemm(&self) -> &SgemmKernel {
        &self.sgemm
    }

    /// What was chosen for each op, e.g. `sgemm=avx512_sgemm_12x32`.
    pub fn describe(&self) -> String {
        format!("tier={} sgemm={} elementwise={}", self.tier.name(), self.sgemm.name, self.tier.name())
    }
}

/// Why `EDADM_KERNELS` could not be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// Not a tier name.
    #[error("EDADM_KERNELS={0:?} is not a kernel tier (use ref, avx2, avx512 or neon)")]
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
    Kernels { tier: Tier::Reference, sgemm: crate::reference::SGEMM_REF }
}

static KERNELS: OnceLock<Result<Kernels, DispatchError>> = OnceLock::new();

/// The process-wide table, chosen on first use by [`select`].
pub fn kernels() -> Result<&'static Kernels, DispatchError> {
    KERNELS.get_or_init(select).as_ref().map_err(Clone::clone)
}
