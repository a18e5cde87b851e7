//! `--report DIR`: the run's numbers as JSON and two SVG plots — TDAC's scores and samples per
//! step, and every unit's held-out losses before and after reconstruction.

use std::fmt::Write as _;
use std::path::Path;

use super::RunReport;
use crate::calib::CalibSet;
use crate::error::{QuantError, Result};

/// One line (or bar) series of a chart.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) color: &'a str,
    pub(crate) points: Vec<f64>,
    pub(crate) bars: bool,
}

const W: f64 = 860.0;
const H: f64 = 360.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 60.0;

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A chart over the indices `0..n` of the series; `log` plots log10 of positive values.
pub(crate) fn chart(title: &str, xlabel: &str, series: &[Series<'_>], log: bool, xticks: &[(usize, String)]) -> String {
    let n = series.iter().map(|s| s.points.len()).max().unwrap_or(0).max(1);
    let tr = |v: f64| if log { v.max(1e-30).log10() } else { v };
    let vals: Vec<f64> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|v| v.is_finite()).map(tr).collect();
    let (mut lo, mut hi) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if !log {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let pw = W - L - R;
    let ph = H - T - B;
    let x = |i: f64| L + pw * (i + 0.5) / n as f64;
    let y = |v: f64| T + ph * (1.0 - (tr(v) - lo) / (hi - lo));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(s, r##"<text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"##, W / 2.0, esc(title));
    let _ = writeln!(s, r##"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##);
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let yy = T + ph * (1.0 - k as f64 / 4.0);
        let label = if log { format!("1e{v:.1}") } else { format!("{v:.3}") };
        let _ = writeln!(s, r##"<line x1="{L}" x2="{}" y1="{yy}" y2="{yy}" stroke="#eee"/>"##, L + pw);
        let _ = writeln!(s, r##"<text x="{}" y="{}" text-anchor="end">{label}</text>"##, L - 4.0, yy + 4.0);
    }
    for (i, label) in xticks {
        let xx = x(*i as f64);
        let _ = writeln!(
            s,
            r##"<text x="{xx}" y="{}" text-anchor="end" transform="rotate(-45 {xx} {})" font-size="9">{}</text>"##,
            T + ph + 12.0,
            T + ph + 12.0,
            esc(label)
        );
    }
    let _ = writeln!(s, r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##, L + pw / 2.0, H - 4.0, esc(xlabel));
    let nb = series.iter().filter(|s| s.bars).count().max(1) as f64;
    let mut bi = 0.0;
    for (k, se) in series.iter().enumerate() {
        if se.bars {
            let bw = pw / n as f64 * 0.8 / nb;
            for (i, &v) in se.points.iter().enumerate() {
                if !v.is_finite() || (log && v <= 0.0) {
                    continue;
                }
                let x0 = L + pw * i as f64 / n as f64 + pw / n as f64 * 0.1 + bi * bw;
                let (y0, y1) = (y(v), if log { T + ph } else { y(0.0) });
                let _ = writeln!(
                    s,
                    r##"<rect x="{x0:.2}" y="{:.2}" width="{bw:.2}" height="{:.2}" fill="{}" opacity="0.8"/>"##,
                    y0.min(y1),
                    (y1 - y0).abs(),
                    se.color
                );
            }
            bi += 1.0;
        } else {
            let pts: Vec<String> = se
                .points
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite() && !(log && **v <= 0.0))
                .map(|(i, &v)| format!("{:.2},{:.2}", x(i as f64), y(v)))
                .collect();
            let _ = writeln!(
                s,
                r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"##,
                pts.join(" "),
                se.color
            );
        }
        let ly = T + 14.0 * k as f64 + 10.0;
        let _ = writeln!(s, r##"<rect x="{}" y="{}" width="10" height="10" fill="{}"/>"##, L + 8.0, ly - 9.0, se.color);
        let _ = writeln!(s, r##"<text x="{}" y="{ly}">{}</text>"##, L + 22.0, esc(se.name));
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `report.json`, `calibration.svg` and `units.svg` into `dir` (created if needed).
pub fn write(dir: &Path, calib: &CalibSet, run: &RunReport, settings: serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| QuantError::Io { path: dir.display().to_string(), source: e })?;
    let per_step = calib.per_step();
    let json = serde_json::json!({
        "settings": settings,
        "calibration": {
            "samples": calib.len(),
            "steps": calib.steps,
            "provenance": calib.provenance.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "samples_per_step": per_step,
            "tdac": calib.tdac.as_ref().map(|t| serde_json::json!({
                "density": t.density,
                "variety": t.variety,
                "density_scaled": t.density_scaled,
                "variety_scaled": t.variety_scaled,
                "score": t.score,
                "counts": t.counts,
                "pair_mse_min_median_max": t.pair_mse,
            })),
        },
        "run": run,
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| QuantError::Invalid(e.to_string()))?;
    crate::io::write_atomic(&dir.join("report.json"), text.as_bytes())?;

    let max_count = per_step.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut series = vec![Series {
        name: "samples per step (scaled to max 1)",
        color: "#9ecae1",
        points: per_step.iter().map(|&c| c as f64 / max_count).collect(),
        bars: true,
    }];
    if let Some(t) = &calib.tdac {
        series.push(Series {
            name: "D^ (density, scaled)",
            color: "#d62728",
            points: t.density_scaled.clone(),
            bars: false,
        });
        series.push(Series {
            name: "V^ (variety, scaled)",
            color: "#2ca02c",
            points: t.variety_scaled.clone(),
            bars: false,
        });
        let smax = t.score.iter().copied().fold(f64::MIN, f64::max).max(1e-12);
        series.push(Series {
            name: "S = D^ + lambda V^ (scaled to max 1)",
            color: "#1f77b4",
            points: t.score.iter().map(|v| v / smax).collect(),
            bars: false,
        });
    }
    let ticks: Vec<(usize, String)> =
        (0..calib.steps).step_by((calib.steps / 10).max(1)).map(|i| (i, i.to_string())).collect();
    let svg = chart(
        "Calibration: TDAC scores and samples per sampler step",
        "sampler step (denoising order)",
        &series,
        false,
        &ticks,
    );
    crate::io::write_atomic(&dir.join("calibration.svg"), svg.as_bytes())?;

    let u = &run.units;
    let ticks: Vec<(usize, String)> = u.iter().enumerate().map(|(i, r)| (i, r.name.clone())).collect();
    let series = [
        Series {
            name: "output loss, initialised",
            color: "#ff7f0e",
            points: u.iter().map(|r| r.block_before).collect(),
            bars: true,
        },
        Series {
            name: "output loss, reconstructed",
            color: "#1f77b4",
            points: u.iter().map(|r| r.block_after).collect(),
            bars: true,
        },
        Series {
            name: "layer losses, initialised",
            color: "#d62728",
            points: u.iter().map(|r| r.layer_before).collect(),
            bars: false,
        },
        Series {
            name: "layer losses, reconstructed",
            color: "#2ca02c",
            points: u.iter().map(|r| r.layer_after).collect(),
            bars: false,
        },
    ];
    let svg = chart("Held-out unit losses before and after reconstruction (log scale)", "", &series, true, &ticks);
    crate::io::write_atomic(&dir.join("units.svg"), svg.as_bytes())
}
