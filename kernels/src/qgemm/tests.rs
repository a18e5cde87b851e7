//! Every u8×i8 tier against the exact definition, bit for bit, over awkward shapes.

use super::*;
use crate::gemm::MatMut;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
}

/// A microkernel with the weight range it is exact for ([`crate::Kernels::qgemm_variants`]).
type Variant<'a> = (&'a QgemmKernel, [i8; 2]);

/// Runs one product and compares it with the definition; B rows are `[kg][n + pad][4]` at a
/// misaligned start, with the extreme values 0/255 and the variant's weight bounds forced in.
#[allow(clippy::too_many_arguments)]
fn check(k: Variant<'_>, m: usize, kg: usize, n: usize, zp: i32, bias: bool, acc: bool, misalign: usize, seed: u64) {
    check_strided(k, m, kg, n, zp, bias, acc, misalign, seed, 4 * (n + 3));
}

/// [`check`] with k-group `g` at `misalign + g·stride`: a stride below `4n` makes the k-groups'
/// runs overlap, as the taps of a spatial convolution do (B is then read in place).
#[allow(clippy::too_many_arguments)]
fn check_strided(
    (kern, [lo, hi]): Variant<'_>,
    m: usize,
    kg: usize,
    n: usize,
    zp: i32,
    bias: bool,
    acc: bool,
    misalign: usize,
    seed: u64,
    stride: usize,
) {
    let mut r = Rng(seed | 1);
    let span = i32::from(hi) - i32::from(lo) + 1;
    let mut w: Vec<i8> = (0..m * kg * 4).map(|_| (i32::from(lo) + i32::from(r.byte()) % span) as i8).collect();
    w[0] = lo;
    if w.len() > 1 {
        w[1] = hi;
    }
    let mut b: Vec<u8> = (0..misalign + (kg - 1) * stride + 4 * n).map(|_| r.byte()).collect();
    b[misalign] = 0;
    b[misalign + 1] = 255;
    let offs: Vec<usize> = (0..kg).map(|g| misalign + g * stride).collect();
    let scale: Vec<f32> = (0..m).map(|i| 1e-4 * (1.0 + (i % 7) as f32)).collect();
    let bias_v: Vec<f32> = (0..m).map(|i| (i as f32 - 3.0) * 0.25).collect();
    let init: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32 * 0.5).collect();
    // The definition, in i64 and then the shared epilogue.
    let t = |row: usize| {
        let mut t = QTile { scale: [0.0; 16], corr: [0; 16], bias: [0.0; 16], raw: false };
        t.scale[0] = scale[row];
        t.bias[0] = if bias { bias_v[row] } else { 0.0 };
        t
    };
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0i64;
            for g in 0..kg {
                for q in 0..4 {
                    s += i64::from(w[(i * kg + g) * 4 + q]) * (i64::from(b[offs[g] + 4 * j + q]) - i64::from(zp));
                }
            }
            let s = i32::try_from(s).unwrap();
            want[i * n + j] = crate::reference::qgemm_epilogue(s, 0, &t(i), acc.then_some(init[i * n + j]));
        }
    }
    let packed = PackedQ::new(kern, &w, m, kg);
    let mut c = init.clone();
    let mut scratch = vec![f32::NAN; qgemm_scratch_len(kern, kg)];
    let ep = QEpilogue { scale: Some(&scale), zero_point: zp, bias: bias.then_some(&bias_v[..]), accumulate: acc };
    qgemm(kern, packed.view(), &b, &offs, n, MatMut { data: &mut c, rs: n, cs: 1 }, &ep, &mut scratch);
    for (e, (g, w)) in c.iter().zip(&want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{}: m{m} kg{kg} n{n} zp{zp}: element {e} got {g}, want {w}", kern.name);
    }
}

crate::testing::tier_test! {
    fn every_tier_matches_the_definition_bit_for_bit(kt) {
        for k in kt.qgemm_variants() {
            let (mr, nr) = (k.0.mr, k.0.nr);
            let mut seed = 1;
            for m in [1, mr - 1, mr, mr + 1, 2 * mr + 3] {
                // Past the last full panel, narrow tiles: whole (16, nr + 16) and partial ones.
                for n in [1, 16, 33, nr - 1, nr, nr + 1, nr + 16, nr + 40, 3 * nr + 2] {
                    for kg in [1, 2, 3, 17] {
                        seed += 1;
                        check(k, m, kg, n, 128, false, false, 0, seed);
                    }
                }
            }
            for (zp, bias, acc, mis) in
                [(0, true, false, 1), (255, true, true, 3), (127, false, true, 2), (37, true, false, 0)]
            {
                seed += 1;
                check(k, 2 * mr + 1, 299, 2 * nr + 5, zp, bias, acc, mis, seed);
            }
            // A deep K: the largest |acc| of a CIFAR-10 decoder conv (K = 3456).
            check(k, mr, 864, nr, 128, true, false, 0, 99);
            // Packed B (at least 8 row panels): several column blocks (a block holds 256 KiB of
            // packed B) with a partial tile, and one block.
            check(k, 8 * mr + 2, 864, 12 * nr + 3, 3, true, true, 1, 100);
            check(k, 8 * mr + 1, 299, 2 * nr + 5, 255, false, true, 3, 101);
            // Overlapping k-group runs (read in place, only the partial tile packed), one and
            // several blocks.
            for (n, kg, stride) in [(nr + 5, 17, 12), (3 * nr + 1, 9, 4 * nr), (12 * nr + 7, 864, 8)] {
                seed += 1;
                check_strided(k, mr + 1, kg, n, 200, true, true, 2, seed, stride);
            }
        }
    }
}

crate::testing::tier_test! {
    fn the_kernel_for_weights_checks_every_weight(k) {
        let mut w = vec![63i8; 4096];
        w[..2048].fill(-64);
        let narrow = k.qgemm_variants().into_iter().find(|v| v.1 == [-64, 63]);
        let want = narrow.map_or(k.qgemm().name, |v| v.0.name);
        assert_eq!(k.qgemm_for(&w).name, want);
        for bad in [-65, 64, i8::MIN, i8::MAX] {
            w[4095] = bad;
            assert_eq!(k.qgemm_for(&w).name, k.qgemm().name, "{bad} must take the full-range kernel");
        }
        // 4-bit weights: the i16-accumulating kernel where the tier has one; one weight outside
        // [−8, 7] sends the layer to the 7-bit one.
        let mut w4 = vec![7i8; 4096];
        w4[..2048].fill(-8);
        let four = k.qgemm_variants().into_iter().find(|v| v.1 == [-8, 7]);
        assert_eq!(k.qgemm_for(&w4).name, four.map_or(want, |v| v.0.name));
        for bad in [-9, 8] {
            w4[4095] = bad;
            assert_eq!(k.qgemm_for(&w4).name, want, "{bad} must leave the 4-bit kernel");
        }
    }
}

crate::testing::tier_test! {
    fn packing_keeps_the_row_sums(k) {
        let w: Vec<i8> = (0..5 * 3 * 4).map(|i| (i * 37 % 256 - 128) as i8).collect();
        let p = PackedQ::new(k.qgemm(), &w, 5, 3);
        for r in 0..5 {
            assert_eq!(p.sums()[r], w[r * 12..r * 12 + 12].iter().map(|&x| i32::from(x)).sum::<i32>());
        }
    }
}

crate::testing::tier_test! {
    fn raw_mode_gives_exact_i32_even_beyond_f32_integers(kt) {
        for (kern, [lo, _]) in kt.qgemm_variants() {
            let (m, kg, n) = (kern.mr + 1, 700, kern.nr + 2);
            // All weights at the variant's lowest (−128, −64), all activations 255, zp 0: |acc| =
            // 64·255·2800 > 2²⁴, every pair sum at the extreme.
            let w = vec![lo; m * kg * 4];
            let b = vec![255u8; kg * n * 4];
            let offs: Vec<usize> = (0..kg).map(|g| g * n * 4).collect();
            let p = PackedQ::new(kern, &w, m, kg);
            let mut c = vec![0f32; m * n];
            let mut scratch = vec![0f32; qgemm_scratch_len(kern, kg)];
            let ep = QEpilogue { scale: None, zero_point: 0, bias: None, accumulate: false };
            qgemm(kern, p.view(), &b, &offs, n, MatMut { data: &mut c, rs: n, cs: 1 }, &ep, &mut scratch);
            let want = i32::from(lo) * 255 * 4 * kg as i32;
            assert!(c.iter().all(|v| v.to_bits() as i32 == want), "{}", kern.name);
            // Accumulating adds in i32.
            let ep = QEpilogue { accumulate: true, zero_point: 1, ..ep };
            qgemm(kern, p.view(), &b, &offs, n, MatMut { data: &mut c, rs: n, cs: 1 }, &ep, &mut scratch);
            let want2 = want + (i32::from(lo) * 254 * 4 * kg as i32);
            assert!(c.iter().all(|v| v.to_bits() as i32 == want2), "{} accumulate", kern.name);
        }
    }
}

#[test]
fn i4_unpacks_low_nibble_first_with_sign() {
    let mut out = [0i8; 512];
    let packed: Vec<u8> = (0..=255u8).collect();
    unpack_i4(&packed, &mut out);
    for (b, pair) in packed.iter().zip(out.chunks(2)) {
        let nib = |v: u8| if v >= 8 { i8::try_from(v).unwrap() - 16 } else { i8::try_from(v).unwrap() };
        assert_eq!(pair, [nib(b & 15), nib(b >> 4)], "byte {b:#04x}");
    }
    // Odd counts: the last high nibble is not an element.
    let mut odd = [0i8; 3];
    unpack_i4(&[0x8F, 0x07], &mut odd);
    assert_eq!(odd, [-1, -8, 7]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        // The committed regressions (`proptest-regressions/`) replay first; then random cases.
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random shapes, zero-points, epilogues, misalignment and overlapping k-group strides,
        /// on every u8×i8 variant of this CPU's best tier and the reference: bit for bit.
        #[test]
        fn random_products_match_the_definition(
            m in 1usize..40,
            kg in 1usize..80,
            n in 1usize..200,
            zp in 0i32..256,
            bias in any::<bool>(),
            acc in any::<bool>(),
            misalign in 0usize..4,
            overlap in any::<bool>(),
            seed in any::<u64>(),
        ) {
            for kt in [crate::Kernels::for_tier(crate::Tier::Reference), crate::select().ok()].into_iter().flatten() {
                for k in kt.qgemm_variants() {
                    let stride = if overlap { 4 * (n / 2 + 1) } else { 4 * (n + 3) };
                    check_strided(k, m, kg, n, zp, bias, acc, misalign, seed, stride);
                }
            }
        }
    }
}
