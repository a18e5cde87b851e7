//! Multiversioning of portable loops: an `#[inline(always)]` generic body is instantiated once
//! per x86-64 tier inside a `#[target_feature]` function, where LLVM vectorises it for that
//! instruction set, and the public entry point dispatches on the table's tier (chosen once at
//! start-up, never re-probed). On aarch64 NEON is the baseline, so the plain body is already
//! vectorised for it.

/// Defines `$vis fn $name(k: &Kernels, args…)` that runs `$body(args…)` compiled for `k`'s tier.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:path) => {
        $(#[$m])*
        $vis fn $name(k: &$crate::Kernels, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            match k.tier().simd() {
                // SAFETY: a `Kernels` table only exists for a tier this CPU supports
                // (`Kernels::for_tier` checks it and the fields are private).
                #[cfg(target_arch = "x86_64")]
                $crate::Tier::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::Tier::Avx2 => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}

pub(crate) use multiversion;
