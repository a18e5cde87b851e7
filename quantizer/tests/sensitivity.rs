//! The sensitivity analysis on the repository's tiny model: every quantizer is measured alone,
//! an empty subset is exactly the FP model, and the files are written.

use candle_core::Device;
use edadm_quantizer::calib::{CalibSet, Rng};
use edadm_quantizer::net::{Fp, Net, tensor4, to_vec};
use edadm_quantizer::quant::sensitivity::{SensitivityConfig, analyse, write};
use edadm_quantizer::quant::{self, NodeQ, Only, QHooks, QuantizeConfig, Recon};
use edadm_runtime::Model;
use edadm_runtime::sampler::{SamplerConfig, Skip};

fn tiny() -> Model {
    Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../formats/tests/golden/tiny-fp32.edq")).unwrap()
}

/// `n` standard-normal samples at spread timesteps.
fn noise_set(model: &Model, n: usize, seed: u64) -> CalibSet {
    let [c, h, w] = model.sample_shape();
    let mut rng = Rng::new(seed);
    let steps = model.schedule().unwrap().len();
    CalibSet {
        sample_shape: [c, h, w],
        x: (0..n * c * h * w).map(|_| rng.normal() as f32).collect(),
        t: (0..n).map(|j| ((j * 7) % steps) as f32).collect(),
        step: (0..n as u32).collect(),
        steps: n,
        tdac: None,
        provenance: vec![("method".into(), "synthetic".into())],
    }
}

#[test]
fn every_quantizer_alone_and_every_step_alone() {
    let model = tiny();
    let net = Net::from_model(&model, &Device::Cpu).unwrap();
    let [c, h, w] = model.sample_shape();
    let set = noise_set(&model, 16, 5);
    let mut cfg = QuantizeConfig::official(8, Recon::None);
    cfg.holdout = 8;
    cfg.init_samples = 8;
    cfg.init_batch = 4;
    let q = quant::quantize(&net, &set, &cfg, None, false, None, &mut |_| {}).unwrap().model;

    // An empty subset quantizes nothing: exactly the FP network.
    let weights = q.weight_tensors(&net).unwrap();
    let none = Only::default();
    let x = tensor4(&set.x[..2 * c * h * w], [2, c, h, w], &net.device).unwrap();
    let fp = to_vec(&net.forward(x.clone(), &set.t[..2], &Fp).unwrap()).unwrap();
    let masked = to_vec(&net.forward(x, &set.t[..2], &QHooks::new(&q, &weights).only(&none)).unwrap()).unwrap();
    assert_eq!(fp, masked);

    let scfg = SensitivityConfig { sampler: SamplerConfig::ddim(4, Skip::Quad), images: 3, range: [-1.0, 1.0] };
    let s = analyse(&net, &q, &model.schedule().unwrap(), &scfg, &mut |_, _| {}).unwrap();
    let acts = q.act_keys(0..q.nodes.len()).len();
    let weighted = q.nodes.iter().filter(|n| matches!(n, Some(NodeQ::Weight(_)))).count();
    assert_eq!(s.quantizers.len(), acts + weighted);
    assert!(s.full.psnr_db.is_finite() && s.full.psnr_db > 10.0, "{}", s.full.psnr_db);
    assert!(s.quantizers.windows(2).all(|p| p[0].psnr_db <= p[1].psnr_db), "ranked, most harmful first");
    for v in s.quantizers.iter().chain([&s.full]) {
        assert_eq!(v.eps_mse_per_step.len(), 4, "{}", v.name);
        assert!(v.eps_mse.is_finite() && v.eps_mse >= 0.0 && v.mse >= 0.0, "{}", v.name);
    }
    // One quantizer alone differs from FP less than the whole model does, on average.
    let mean_alone = s.quantizers.iter().map(|v| v.eps_mse).sum::<f64>() / s.quantizers.len() as f64;
    assert!(mean_alone < s.full.eps_mse, "{mean_alone} vs {}", s.full.eps_mse);
    assert_eq!(s.steps.len(), 4);
    assert!(s.steps.iter().all(|&(t, p)| t >= 0 && p > 0.0));

    let dir = std::env::temp_dir().join(format!("edadm-sensitivity-{}", std::process::id()));
    write(&dir, &s, 5).unwrap();
    let md = std::fs::read_to_string(dir.join("sensitivity.md")).unwrap();
    let rows = md.lines().filter(|l| matches!(l.split('|').nth(3).map(str::trim), Some("act" | "weights"))).count();
    assert_eq!(rows, acts + weighted);
    for f in ["sensitivity.json", "quantizers.svg", "steps.svg"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--w8-auto`'s ranking measures: a layer whose 4-bit weights are made far coarser ranks first,
/// every ranked layer's error is the one `analyse` measures for its weights alone, and the
/// pipeline keeps the top-ranked layers at 8 bits and says so in the file.
#[test]
fn weight_ranking_finds_a_damaged_layer_and_the_pipeline_keeps_it_at_8_bits() {
    use edadm_quantizer::pipeline::{Options, quantize};
    use edadm_quantizer::quant::sensitivity::rank_weights;
    let model = tiny();
    let net = Net::from_model(&model, &Device::Cpu).unwrap();
    let set = noise_set(&model, 16, 9);
    let cfg = QuantizeConfig::official(4, Recon::None);
    let q = quant::weights_nearest(&net, &set, &cfg.structure).unwrap();
    let low: Vec<usize> =
        (0..q.nodes.len()).filter(|&i| matches!(&q.nodes[i], Some(NodeQ::Weight(w)) if w.bits < 8)).collect();
    assert!(low.len() >= 2, "the tiny model has {} layers below 8 bits", low.len());
    let scfg = SensitivityConfig { sampler: SamplerConfig::ddim(3, Skip::Quad), images: 2, range: [-1.0, 1.0] };
    let schedule = model.schedule().unwrap();

    let ranks = rank_weights(&net, &q, &schedule, &scfg, &mut |_, _| {}).unwrap();
    assert_eq!(ranks.len(), low.len());
    assert!(ranks.windows(2).all(|p| p[0].mse >= p[1].mse), "most harmful first");
    assert!(ranks.iter().all(|r| r.mse.is_finite() && r.mse > 0.0 && r.params > 0));
    let s = analyse(&net, &q, &schedule, &scfg, &mut |_, _| {}).unwrap();
    for r in &ranks {
        let v = s.quantizers.iter().find(|v| v.name == format!("{} weights", r.name)).unwrap();
        assert_eq!(v.mse, r.mse, "{}", r.name);
    }

    // A layer from the lower half of the ranking, its grid made 8× coarser, becomes the most
    // harmful (the tiny model's attention k and q barely move its images, whatever their grid).
    let victim = ranks[ranks.len() / 2].node;
    let mut damaged = q.clone();
    let Some(NodeQ::Weight(wn)) = &mut damaged.nodes[victim] else { unreachable!() };
    for g in &mut wn.groups {
        g.scales.iter_mut().for_each(|d| *d *= 8.0);
    }
    wn.ints.iter_mut().for_each(|v| *v = (f32::from(*v) / 8.0).round() as i8);
    let ranks = rank_weights(&net, &damaged, &schedule, &scfg, &mut |_, _| {}).unwrap();
    assert_eq!(ranks[0].node, victim, "{ranks:?}");

    // The pipeline keeps the top-ranked layer at 8 bits and records the choice.
    let top = rank_weights(
        &net,
        &q,
        &schedule,
        &SensitivityConfig { sampler: SamplerConfig::ddim(2, Skip::Quad), images: 3, ..scfg },
        &mut |_, _| {},
    )
    .unwrap()[0]
        .clone();
    let opts = Options {
        wbits: 4,
        w8_auto: Some(1),
        gptq: Some(false),
        w8_auto_images: 3,
        w8_auto_steps: 2,
        recon: Some(Recon::None),
        holdout: Some(8),
        ..Options::default()
    };
    let out = quantize(&model, &set, &opts, None, &mut |_| {}).unwrap();
    let Some(NodeQ::Weight(wn)) = &out.model.nodes[top.node] else { unreachable!() };
    assert_eq!(wn.bits, 8, "{}", top.name);
    let meta = |k: &str| out.metadata.iter().find(|(key, _)| key == k).map(|(_, v)| format!("{v:?}")).unwrap();
    assert!(meta("quant.w8_layers").contains(&top.name), "{}", meta("quant.w8_layers"));
    assert!(meta("quant.w8_auto").contains('1'), "{}", meta("quant.w8_auto"));
    let still_low =
        low.iter().filter(|&&i| matches!(&out.model.nodes[i], Some(NodeQ::Weight(w)) if w.bits == 4)).count();
    assert_eq!(still_low, low.len() - 1);
}
