//! The measurement behind `edadm bench` on the golden quantized model, on two threads: timings
//! are ordered and positive, the profile covers every step, the memory split adds up.

use edadm_runtime::bench::{BenchOptions, Timing, measure};
use edadm_runtime::{Model, Session, SessionOptions};

#[test]
fn measuring_a_quantized_model_reports_consistent_figures() {
    let path = format!("{}/../formats/tests/golden/tiny-w4a8.edq", env!("CARGO_MANIFEST_DIR"));
    let model = Model::open(&path).unwrap();
    let mut s = Session::new(&model, &SessionOptions { threads: 2, ..SessionOptions::batch(2) }).unwrap();
    let r = measure(&mut s, Some(path.as_ref()), &BenchOptions { runs: 3, steps: 2, profile: true }).unwrap();
    assert!(0.0 < r.eval.min && r.eval.min <= r.eval.median && r.eval.median <= r.eval.max, "{:?}", r.eval);
    assert!(r.step_ms.is_some_and(|s| s > 0.0));
    let p = r.profile.as_ref().unwrap();
    assert_eq!(p.len(), r.steps.len());
    assert_eq!(p.len(), s.num_steps());
    assert!(p.iter().all(|&ms| ms >= 0.0));
    assert_eq!(r.macs, r.steps.iter().map(|st| st.macs).sum::<u64>());
    assert!(r.macs > 0);
    // The integer kernels run the quantized convolutions and the attention.
    assert!(r.steps.iter().any(|st| st.op == "conv u8×i8" && st.variant.contains("qgemm")), "{:?}", r.steps);
    assert!(r.steps.iter().any(|st| st.op == "attention u8×i8"));
    let m = r.memory;
    assert_eq!(m.file, std::fs::metadata(&path).unwrap().len());
    assert!(m.arena > 0 && m.prepared > 0);
    if cfg!(target_os = "linux") {
        assert!(m.peak_rss > m.arena, "{m:?}");
        assert!(m.mapped_resident <= m.file.next_multiple_of(1 << 16), "{m:?}");
        assert_eq!(m.rest(), m.peak_rss.saturating_sub(m.mapped_resident + m.arena + m.prepared));
    }
}

#[test]
fn timing_statistics() {
    let t = Timing::of(&mut [3.0, 1.0, 2.0, 10.0]);
    assert_eq!(t, Timing { median: 2.5, min: 1.0, max: 10.0 });
    assert_eq!(Timing::of(&mut [4.0]).median, 4.0);
}
