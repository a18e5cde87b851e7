//! Activation range initialisation (`--act-init`): per calibration batch a range by the
//! official L2.4 search, MinMax or a percentile, folded over batches as the official code does.

use super::{Grid, SEARCH_STEPS, Side, best_range, min_max, search_tensor};

/// How an activation quantizer's range is initialised from the calibration batches
/// (`--act-init`).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ActInit {
    /// The official code (METHOD.md §2.3): per batch the L2.4 search over symmetric candidates
    /// `[−thr, thr]` (one-sided tensors `[0, thr]`), folded into an EMA (first batch, then 0.1).
    #[default]
    Mse,
    /// The L2.4 search over candidates that scale both ends, `[α·min, α·max]`, α = i/100, with the
    /// official EMA: a tensor living in `[−0.28, 6]` (SiLU) keeps all 256 levels for its range
    /// instead of spending half of them on `[−6, −0.28]`.
    MseAsym,
    /// The smallest and largest value over all batches (ONNX Runtime's `MinMax` calibration).
    MinMax,
    /// Per batch the lower and upper percentile (`p` and `100 − p`), averaged over the batches.
    Percentile(f32),
    /// Per quantizer, the one of [`LAYER_CANDIDATES`] whose range gives the smallest error of
    /// the layer it feeds: the candidates are folded side by side over the batches, then each is
    /// tried on its layer alone (FP inputs, the layer's quantized weights) against the FP output.
    Layer,
}

/// The ranges `--act-init layer` chooses from, per quantizer (the first is the one the
/// observation pass quantizes with).
pub const LAYER_CANDIDATES: [ActInit; 5] = [
    ActInit::Percentile(99.999),
    ActInit::Percentile(99.99),
    ActInit::Percentile(99.9),
    ActInit::Percentile(99.0),
    ActInit::MinMax,
];

impl ActInit {
    /// From the command-line name (`mse`, `mse-asym`, `minmax`, `percentile` with `p`).
    pub fn from_name(name: &str, p: f32) -> Option<ActInit> {
        Some(match name {
            "mse" => ActInit::Mse,
            "mse-asym" => ActInit::MseAsym,
            "minmax" => ActInit::MinMax,
            "percentile" => ActInit::Percentile(p),
            "layer" => ActInit::Layer,
            _ => return None,
        })
    }

    /// The command-line name.
    pub fn name(self) -> String {
        match self {
            ActInit::Mse => "mse".into(),
            ActInit::MseAsym => "mse-asym".into(),
            ActInit::MinMax => "minmax".into(),
            ActInit::Percentile(p) => format!("percentile {p}"),
            ActInit::Layer => "layer".into(),
        }
    }
}

/// The values at quantiles `lo` and `hi` (0..=1) of `x` (NaNs skipped): the elements of rank
/// `round(q·(n − 1))`, from one copy of `x`.
pub fn quantiles(x: &[f32], lo: f64, hi: f64) -> (f32, f32) {
    let mut v: Vec<f32> = x.iter().copied().filter(|v| !v.is_nan()).collect();
    quantiles_in_place(&mut v, lo, hi)
}

/// The L2.4 search over candidate ranges `[α·lo, α·hi]`, `α = i/100`, `(lo, hi)` the tensor's
/// minimum and maximum (both ends scaled together).
pub fn search_tensor_asym(x: &[f32], bits: u32) -> (f32, f32) {
    let (lo, hi) = min_max(x);
    if x.is_empty() || !lo.is_finite() || !hi.is_finite() {
        return (0.0, 0.0);
    }
    let scaled = (1..=SEARCH_STEPS).map(|i| i as f32 / SEARCH_STEPS as f32).map(|a| (lo * a, hi * a));
    best_range(x, bits, scaled.collect(), (lo, hi))
}

/// An activation quantizer's initialisation state: the side fixed by the first batch and the
/// range folded over batches as [`ActInit`] says — the official exponential moving average of
/// the searched ranges (`update_quantize_range`: the first batch sets it, each later one moves
/// it by 0.1), the running extremes, or the running mean of percentiles. With
/// [`ActInit::Layer`] every one of [`LAYER_CANDIDATES`] is folded side by side until
/// [`ActRange::choose`] picks one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActRange {
    bits: u32,
    init: ActInit,
    side: Option<Side>,
    range: Option<(f32, f32)>,
    /// `ActInit::Layer`: the candidates' ranges.
    cands: [Option<(f32, f32)>; LAYER_CANDIDATES.len()],
    batches: u32,
}

/// The statistic of one batch under `init` (a percentile pair, the extremes or the searched
/// range); `side` is the quantizer's side (the official search's symmetric candidates).
fn batch_range(x: &[f32], bits: u32, init: ActInit, side: Side) -> (f32, f32) {
    match init {
        ActInit::Mse => search_tensor(x, bits, side),
        ActInit::MseAsym => search_tensor_asym(x, bits),
        ActInit::MinMax => {
            let (mn, mx) = min_max(x);
            if mn.is_finite() && mx.is_finite() { (mn, mx) } else { (0.0, 0.0) }
        }
        ActInit::Percentile(p) => {
            let q = f64::from(p.clamp(50.0, 100.0)) / 100.0;
            quantiles(x, 1.0 - q, q)
        }
        ActInit::Layer => unreachable!("a layer choice folds its candidates"),
    }
}

/// Folds one batch's range `b` into the running range `r` after `n` batches, as `init` says.
fn fold(init: ActInit, r: Option<(f32, f32)>, n: u32, b: (f32, f32)) -> (f32, f32) {
    let (mn, mx) = b;
    if let ActInit::Mse | ActInit::MseAsym = init {
        // The first batch goes through the same arithmetic (as before, bit for bit).
        let (rmn, rmx) = r.unwrap_or(b);
        return (0.1 * mn + 0.9 * rmn, 0.1 * mx + 0.9 * rmx);
    }
    let Some((rmn, rmx)) = r else { return b };
    match init {
        ActInit::Mse | ActInit::MseAsym => unreachable!("folded above"),
        ActInit::MinMax => (rmn.min(mn), rmx.max(mx)),
        ActInit::Percentile(_) | ActInit::Layer => {
            let n = n as f32;
            ((rmn * n + mn) / (n + 1.0), (rmx * n + mx) / (n + 1.0))
        }
    }
}

impl ActRange {
    /// A quantizer with `bits` bits initialised by the official search that has seen nothing.
    pub fn new(bits: u32) -> Self {
        Self::with_init(bits, ActInit::Mse)
    }

    /// A quantizer with `bits` bits initialised by `init` that has seen nothing.
    pub fn with_init(bits: u32, init: ActInit) -> Self {
        ActRange { bits, init, side: None, range: None, cands: [None; LAYER_CANDIDATES.len()], batches: 0 }
    }

    /// Folds this batch into the range.
    pub fn observe(&mut self, x: &[f32]) {
        let side = *self.side.get_or_insert_with(|| Side::of(x));
        if self.init == ActInit::Layer {
            // One copy, the percentile pairs selected from it; the extremes from the data.
            let mut v: Vec<f32> = x.iter().copied().filter(|v| !v.is_nan()).collect();
            for (i, c) in LAYER_CANDIDATES.iter().enumerate() {
                let b = match *c {
                    ActInit::Percentile(p) => {
                        quantiles_in_place(&mut v, 1.0 - f64::from(p) / 100.0, f64::from(p) / 100.0)
                    }
                    other => batch_range(x, self.bits, other, side),
                };
                self.cands[i] = Some(fold(*c, self.cands[i], self.batches, b));
            }
            self.range = self.cands[0];
        } else {
            let b = batch_range(x, self.bits, self.init, side);
            self.range = Some(fold(self.init, self.range, self.batches, b));
        }
        self.batches += 1;
    }

    /// The side, once a batch was seen.
    pub fn side(&self) -> Option<Side> {
        self.side
    }

    /// The grid of the folded range; `None` before the first batch.
    pub fn grid(&self) -> Option<Grid> {
        self.range.map(|(mn, mx)| Grid::from_range(mn, mx, self.bits))
    }

    /// `ActInit::Layer`: the candidates' grids, in [`LAYER_CANDIDATES`] order (empty otherwise
    /// and before the first batch).
    pub fn candidates(&self) -> Vec<Grid> {
        self.cands.iter().map_while(|c| c.map(|(mn, mx)| Grid::from_range(mn, mx, self.bits))).collect()
    }

    /// `ActInit::Layer`: keeps candidate `i` as the range.
    pub fn choose(&mut self, i: usize) {
        if let Some(Some(r)) = self.cands.get(i) {
            self.range = Some(*r);
        }
    }
}

/// [`quantiles`] on a NaN-free vector that may be reordered (several pairs from one copy).
fn quantiles_in_place(v: &mut [f32], lo: f64, hi: f64) -> (f32, f32) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let rank = |q: f64| ((q.clamp(0.0, 1.0) * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
    let (kl, kh) = (rank(lo), rank(hi));
    let l = *v.select_nth_unstable_by(kl, f32::total_cmp).1;
    let h = *v.select_nth_unstable_by(kh, f32::total_cmp).1;
    (l, h)
}
