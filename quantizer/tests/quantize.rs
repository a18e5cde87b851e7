//! The quantizer end to end on the shared models (and, always, on the in-repo ones): exported
//! files run by the runtime's integer path match the fake-quant forward (per node and whole
//! network), reconstruction lowers the unit losses, and a resumed run equals an uninterrupted
//! one.

mod common;

use std::collections::HashSet;

use candle_core::{Device, Tensor};
use common::*;
use edadm_format::graph::{NodeQuant, ValueId};
use edadm_quantizer::calib::{CalibSet, Rng};
use edadm_quantizer::import::Family;
use edadm_quantizer::net::{Env, Net, tensor4, to_vec};
use edadm_quantizer::quant::{self, Event, QHooks, QModel, QuantizeConfig, Recon};
use edadm_runtime::{Model, Session, SessionOptions};

/// `n` noisy samples `x_t = √ᾱ·x₀ + √(1 − ᾱ)·ε` of smooth random images at spread timesteps.
fn synthetic_set(model: &Model, n: usize, seed: u64) -> CalibSet {
    let [c, h, w] = model.sample_shape();
    let sched = model.schedule().unwrap();
    let steps = sched.len();
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(n * c * h * w);
    let mut t = Vec::with_capacity(n);
    for j in 0..n {
        let step = (j * (steps - 1)) / n.max(2).saturating_sub(1).max(1);
        let step = step.min(steps - 1);
        let a = sched.alpha_bar(step as i64) as f32;
        let (fx, fy, ph) = (rng.uniform_f32() * 0.5, rng.uniform_f32() * 0.5, rng.uniform_f32() * 6.0);
        for ch in 0..c {
            for yy in 0..h {
                for xx in 0..w {
                    let x0 = ((xx as f32 * fx + yy as f32 * fy + ph + ch as f32).sin() * 0.9).clamp(-1.0, 1.0);
                    x.push(a.sqrt() * x0 + (1.0 - a).sqrt() * rng.normal() as f32);
                }
            }
        }
        t.push(step as f32);
    }
    CalibSet {
        sample_shape: [c, h, w],
        x,
        t,
        step: (0..n as u32).collect(),
        steps: n,
        tdac: None,
        provenance: vec![("method".into(), "synthetic".into())],
    }
}

fn small_config(wbits: u32, method: Recon, iters: usize) -> QuantizeConfig {
    let mut cfg = QuantizeConfig::official(wbits, method);
    cfg.recon.iters = iters;
    cfg.recon.batch = 4;
    cfg.holdout = 8;
    cfg.init_samples = 16;
    cfg.init_batch = 8;
    cfg.chunk = 8;
    cfg
}

fn init_only(model: &Model, wbits: u32) -> (Net, QModel) {
    let net = Net::from_model(model, &Device::Cpu).unwrap();
    let set = synthetic_set(model, 24, 5);
    let cfg = small_config(wbits, Recon::None, 0);
    let out = quant::quantize(&net, &set, &cfg, None, false, None, &mut |_| {}).unwrap();
    (net, out.model)
}

/// Exports `q`, runs the file on the runtime keeping every value, and compares every node fed
/// the runtime's own inputs, and the whole network; with time-step groups, once per group.
fn parity(model: &Model, net: &Net, q: &QModel, label: &str) {
    let bytes = quant::export::build(model, q, Vec::new()).unwrap();
    let qm = Model::from_bytes(bytes).unwrap();
    assert!(qm.is_quantized());
    let quantized = qm.graph().nodes.iter().filter(|n| n.quant.is_some()).count();
    assert_eq!(quantized, q.nodes.iter().filter(|n| n.is_some()).count());
    let set = synthetic_set(model, 3, 99);
    let Some(steps) = &q.steps else {
        assert!(qm.graph().step_groups.is_none());
        let w57 = q.nodes.iter().flatten().any(|n| matches!(n, quant::NodeQ::Weight(w) if (5..=7).contains(&w.bits)));
        let minor = if w57 { 2 } else { 0 };
        assert_eq!(
            qm.file().header().version_minor,
            minor,
            "files without a time-step table: minor 0, or 2 with 5–7-bit weights"
        );
        return parity_one(&qm, net, q, &set, label);
    };
    let table = qm.graph().step_groups.as_ref().expect("the file has the time-step table");
    assert_eq!(table.edges, steps.edges);
    assert!(qm.file().header().version_minor >= 1);
    for g in 0..q.num_groups() {
        // An edge belongs to the group above it.
        let t = if g == 0 { steps.edges[0] - 1.0 } else { steps.edges[g - 1] };
        assert_eq!(table.group_of(t), g);
        let mut at = set.clone();
        at.t = vec![t; at.len()];
        parity_one(&qm, net, &q.at_group(g), &at, &format!("{label} group {g}"));
    }
    // One batch, one group: timesteps of two groups in one batch are refused with a clear error.
    let mut sess = Session::new(&qm, &SessionOptions::batch(2)).unwrap();
    let x = vec![0.1f32; 2 * set.sample_len()];
    let e = sess.run(&x, &[steps.edges[0] - 1.0, steps.edges[0]]).unwrap_err().to_string();
    assert!(e.contains("different time-step groups"), "{e}");
}

fn parity_one(qm: &Model, net: &Net, q: &QModel, set: &CalibSet, label: &str) {
    let [c, h, w] = set.sample_shape;
    let n = set.len();
    let mut opts = SessionOptions::batch(n);
    opts.keep = (0..qm.graph().num_values).map(ValueId).collect();
    let mut sess = Session::new(qm, &opts).unwrap();
    let got = sess.run(&set.x, &set.t).unwrap().to_vec();
    // The default plan fuses adds and upsamplings into the integer convolutions (keeping every
    // value, as above, disables that): the same bits, on one thread and on two.
    for threads in [1, 2] {
        let mut fused = Session::new(qm, &SessionOptions { threads, ..SessionOptions::batch(n) }).unwrap();
        assert!(fused.num_steps() < sess.num_steps(), "{label}: nothing fused");
        let f = fused.run(&set.x, &set.t).unwrap();
        assert!(
            f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{label}: the fused plan differs on {threads} threads"
        );
    }

    let weights = q.weight_tensors(net).unwrap();
    let ints = q.int_tensors(net).unwrap();
    let hooks = QHooks::new(q, &weights).integer(&ints);
    let want =
        to_vec(&net.forward(tensor4(&set.x, [n, c, h, w], &Device::Cpu).unwrap(), &set.t, &hooks).unwrap()).unwrap();
    // Every node on the runtime's own inputs.
    let mut env: Env = vec![None; qm.graph().num_values as usize];
    for v in 0..qm.graph().num_values {
        let shape = sess.value_shape(ValueId(v)).unwrap().to_vec();
        let data = sess.value(ValueId(v)).unwrap().to_vec();
        env[v as usize] = Some(Tensor::from_vec(data, shape, &Device::Cpu).unwrap());
    }
    if std::env::var_os("EDADM_DEBUG_PARITY").is_some() {
        let mut fenv = net.inputs(tensor4(&set.x, [n, c, h, w], &Device::Cpu).unwrap(), &set.t).unwrap();
        net.run(0..qm.graph().nodes.len(), &mut fenv, &hooks).unwrap();
        for (ni, node) in qm.graph().nodes.iter().enumerate() {
            let y = to_vec(fenv[node.output.0 as usize].as_ref().unwrap()).unwrap();
            let own = to_vec(&net.node(ni, &env, &hooks).unwrap()).unwrap();
            println!(
                "{ni:4} {:40} chain {:.2e} own {:.2e}",
                node.name,
                rel_err(sess.value(node.output).unwrap(), &y),
                rel_err(sess.value(node.output).unwrap(), &own)
            );
        }
    }
    let mut worst = (0f32, String::new());
    for (ni, node) in qm.graph().nodes.iter().enumerate() {
        let y = to_vec(&net.node(ni, &env, &hooks).unwrap()).unwrap();
        let r = sess.value(node.output).unwrap();
        let e = rel_err(r, &y);
        let limit = match &node.quant {
            // Integer nodes compute exactly what the runtime computes.
            Some(NodeQuant::Weight(w)) if w.groups[0].input.is_some() => f32::MIN_POSITIVE,
            _ => 1e-4,
        };
        assert!(
            e < limit || e == 0.0,
            "{label}: node {} differs by {e} of its output magnitude (limit {limit})",
            node.name
        );
        if e > worst.0 {
            worst = (e, node.name.clone());
        }
    }
    // The whole network: the interpreter's integer form computes quantized convs/linears
    // exactly and takes norms, activations and the quantized attention from the runtime's
    // kernels, so only the f32 output conv differs (summation order). Measured: < 1e-6.
    let e = rel_err(&got, &want);
    assert!(e < 1e-3, "{label}: whole network differs by {e} of its output magnitude");

    println!("{label}: whole network {e:.2e}, worst node {} {:.2e}", worst.1, worst.0);
}

#[test]
fn exported_fmnist_ddpm_runs_on_the_integer_runtime_like_the_fake_quant_forward() {
    let Some(shared) = shared("exported_fmnist_ddpm_runs_on_the_integer_runtime_like_the_fake_quant_forward") else {
        return;
    };
    let model = import_model(Family::Ddpm, &shared.join("models/fmnist-ddpm/model.safetensors"), Some("fmnist-ddpm"));
    for wbits in [8, 4] {
        let (net, q) = init_only(&model, wbits);
        // The split skip convs of the decoder and the 8-bit first/last layers are in place.
        let split = q
            .nodes
            .iter()
            .filter_map(|n| n.as_ref())
            .filter(|n| matches!(n, quant::NodeQ::Weight(w) if w.groups.len() == 2))
            .count();
        assert_eq!(split, 9, "every decoder ResBlock's skip conv is split");
        let first = net.graph.nodes.iter().position(|n| n.name == "temb.dense.0").unwrap();
        let last = net.graph.nodes.iter().position(|n| n.name == "conv_out").unwrap();
        assert_eq!(q.weight(first).unwrap().bits, 8);
        assert_eq!(q.weight(last).unwrap().bits, 8);
        assert!(q.weight(last).unwrap().groups[0].input.is_none());
        let conv_in = net.graph.nodes.iter().position(|n| n.name == "conv_in").unwrap();
        assert_eq!(q.weight(conv_in).unwrap().bits, wbits);
        parity(&model, &net, &q, &format!("fmnist-ddpm W{wbits}A8"));
    }
}

#[test]
fn time_step_groups_corrected_biases_and_an_f32_output_layer_run_like_the_fake_quant_forward() {
    let Some(shared) =
        shared("time_step_groups_corrected_biases_and_an_f32_output_layer_run_like_the_fake_quant_forward")
    else {
        return;
    };
    let model = import_model(Family::Ddpm, &shared.join("models/fmnist-ddpm/model.safetensors"), Some("fmnist-ddpm"));
    let net = Net::from_model(&model, &Device::Cpu).unwrap();
    let set = synthetic_set(&model, 24, 5);
    let mut cfg = small_config(8, Recon::None, 0);
    cfg.bias_correction = true;
    cfg.structure.fp_last = true;
    cfg.structure.fp_input = true;
    cfg.step_groups = quant::StepGrouping::Groups(3);
    let grouped = quant::quantize(&net, &set, &cfg, None, false, None, &mut |_| {}).unwrap().model;
    cfg.step_groups = quant::StepGrouping::One;
    let one = quant::quantize(&net, &set, &cfg, None, false, None, &mut |_| {}).unwrap().model;
    let steps = grouped.steps.as_ref().expect("a time-step table");
    assert_eq!(grouped.num_groups(), 3);
    assert_eq!(steps.edges.len(), 2);
    assert!(steps.edges[0] < steps.edges[1]);
    // The 16 initialisation samples have 16 distinct timesteps: groups of 5, 5 and 6, the edges
    // halfway between neighbours.
    let (train, _) = quant::split_rows(set.len(), cfg.holdout, cfg.seed).unwrap();
    let mut ts: Vec<f32> = train[..cfg.init_samples].iter().map(|&r| set.t[r]).collect();
    ts.sort_by(f32::total_cmp);
    assert_eq!(steps.edges, vec![0.5 * (ts[4] + ts[5]), 0.5 * (ts[9] + ts[10])]);
    // Same weights; each group's activation steps come from its own samples, so they differ from
    // one another and from the single table's.
    assert_eq!(grouped.weight_tensors(&net).unwrap().len(), one.weight_tensors(&net).unwrap().len());
    let keys = one.act_keys(0..one.nodes.len());
    let delta = |q: &QModel, k: (usize, usize)| q.act(k.0, k.1).unwrap().delta;
    for g in 0..3 {
        let at = grouped.at_group(g);
        let differ = keys.iter().filter(|&&k| delta(&at, k) != delta(&one, k)).count();
        assert!(differ > keys.len() / 2, "group {g}: only {differ} of {} quantizers differ", keys.len());
    }
    let (a0, a2) = (grouped.at_group(0), grouped.at_group(2));
    assert!(keys.iter().filter(|&&k| delta(&a0, k) != delta(&a2, k)).count() > keys.len() / 2);
    // Group-specific ranges fit their own samples better than the single table does.
    let rows: Vec<usize> = (0..set.len()).collect();
    let e_grouped = quant::eps_mse(&net, &grouped, &set, &rows, 8).unwrap();
    let e_one = quant::eps_mse(&net, &one, &set, &rows, 8).unwrap();
    assert!(e_grouped < e_one, "ε-MSE with groups {e_grouped:.3e}, one table {e_one:.3e}");
    // Bias correction changed the biases of the conv and linear layers (all of them have one),
    // and the exported file carries them.
    let corrected =
        grouped.nodes.iter().flatten().filter(|n| matches!(n, quant::NodeQ::Weight(w) if w.bias.is_some())).count();
    assert!(corrected > 20, "{corrected} corrected biases");
    // The output layer stays f32.
    let last = net.graph.nodes.iter().position(|n| n.name == "conv_out").unwrap();
    assert!(grouped.nodes[last].is_none());
    // conv_in reads x_t: quantized weights, an f32 input.
    let first = net.graph.nodes.iter().position(|n| n.name == "conv_in").unwrap();
    assert!(matches!(&grouped.nodes[first], Some(quant::NodeQ::Weight(w)) if w.groups[0].input.is_none()));
    parity(&model, &net, &grouped, "fmnist-ddpm W8A8 3 time-step groups, corrected biases, f32 output layer and input");
}

#[test]
fn exported_mnist_unet_runs_on_the_integer_runtime_like_the_fake_quant_forward() {
    let Some(shared) = shared("exported_mnist_unet_runs_on_the_integer_runtime_like_the_fake_quant_forward") else {
        return;
    };
    let model = import_model(Family::MnistUnet, &shared.join("models/mnist-unet/model.safetensors"), None);
    // 7-bit weights run on the `vpmaddubsw` kernel where the CPU lacks VNNI (AVX2).
    for wbits in [8, 7, 4] {
        let (net, q) = init_only(&model, wbits);
        parity(&model, &net, &q, &format!("mnist-unet W{wbits}A8"));
    }
    // The network input kept f32: mnist-unet's first skip conv reads x_t plus the time
    // embedding (an Add), and no other weighted node reads it.
    let net = Net::from_model(&model, &Device::Cpu).unwrap();
    let mut cfg = small_config(8, Recon::None, 0);
    cfg.structure.fp_input = true;
    let q = quant::quantize(&net, &synthetic_set(&model, 24, 5), &cfg, None, false, None, &mut |_| {}).unwrap().model;
    let f32_in: Vec<&str> = (0..q.nodes.len())
        .filter(|&i| matches!(&q.nodes[i], Some(quant::NodeQ::Weight(w)) if w.groups[0].input.is_none()))
        .map(|i| net.graph.nodes[i].name.as_str())
        .collect();
    // The first skip conv and the output conv (whose input is f32 in every recipe).
    assert_eq!(f32_in.len(), 2, "{f32_in:?}");
    assert_eq!(f32_in[0], "encoders.0.0.residual_conv", "{f32_in:?}");
    parity(&model, &net, &q, "mnist-unet W8A8, f32 input");
    // Named layers kept f32 (`--fp-layers`): exactly those lose their input quantizer; an
    // unknown name or a transposed convolution is refused.
    let mut cfg = small_config(8, Recon::None, 0);
    cfg.structure.fp_layers = vec!["decoders.2.0.conv1".into(), "decoders.2.1.conv1".into()];
    let q = quant::quantize(&net, &synthetic_set(&model, 24, 5), &cfg, None, false, None, &mut |_| {}).unwrap().model;
    let f32_in: Vec<&str> = (0..q.nodes.len())
        .filter(|&i| matches!(&q.nodes[i], Some(quant::NodeQ::Weight(w)) if w.groups[0].input.is_none()))
        .map(|i| net.graph.nodes[i].name.as_str())
        .collect();
    assert_eq!(f32_in.len(), 3, "{f32_in:?}");
    assert!(f32_in.contains(&"decoders.2.0.conv1") && f32_in.contains(&"decoders.2.1.conv1"), "{f32_in:?}");
    parity(&model, &net, &q, "mnist-unet W8A8, two layers with f32 inputs");
    for bad in ["no.such.layer", "ups.2"] {
        cfg.structure.fp_layers = vec![bad.into()];
        let r = quant::quantize(&net, &synthetic_set(&model, 24, 5), &cfg, None, false, None, &mut |_| {});
        assert!(r.is_err_and(|e| e.to_string().contains(bad)), "--fp-layers {bad} accepted");
    }
    // GPTQ rounding (transposed convolutions keep nearest rounding) and activation ranges
    // chosen by layer-output error: other integers and ranges, the same parity.
    let mut cfg = small_config(4, Recon::None, 0);
    cfg.gptq = true;
    cfg.act_init = edadm_quantizer::grid::ActInit::Layer;
    let out = quant::quantize(&net, &synthetic_set(&model, 24, 5), &cfg, None, false, None, &mut |_| {}).unwrap();
    let (_, nearest) = init_only(&model, 4);
    let keys = nearest.act_keys(0..nearest.nodes.len()).len();
    assert_eq!(out.report.act_choices.values().sum::<usize>(), keys, "{:?}", out.report.act_choices);
    let (mut changed, mut total) = (0, 0);
    for (a, b) in out.model.nodes.iter().zip(&nearest.nodes) {
        if let (Some(quant::NodeQ::Weight(a)), Some(quant::NodeQ::Weight(b))) = (a, b) {
            total += a.ints.len();
            changed += a.ints.iter().zip(&b.ints).filter(|(x, y)| x != y).count();
            if a.transposed {
                assert_eq!(a.ints, b.ints, "transposed convolutions round to nearest");
            }
        }
    }
    assert!(changed * 20 > total, "GPTQ changed {changed} of {total} integer weights");
    parity(&model, &net, &out.model, "mnist-unet W4A8, GPTQ weights, ranges chosen by layer error");
}

fn run_fbr(
    model: &Model,
    ckpt: Option<&std::path::Path>,
    resume: bool,
    snapshot: Option<(&std::path::Path, usize)>,
) -> quant::Outcome {
    let net = Net::from_model(model, &Device::Cpu).unwrap();
    let set = synthetic_set(model, 24, 5);
    let cfg = small_config(8, Recon::Fbr, 20);
    let mut progress = |e: Event<'_>| {
        if let (Event::UnitDone { unit, .. }, Some((copy, at)), Some(p)) = (&e, snapshot, ckpt)
            && *unit == at
        {
            // The checkpoint on disk now holds `at` finished units: keep a copy, as if the
            // process had been killed here.
            std::fs::copy(p, copy).unwrap();
        }
    };
    quant::quantize(&net, &set, &cfg, ckpt, resume, None, &mut progress).unwrap()
}

#[test]
fn fbr_lowers_unit_losses_exports_a_loadable_file_and_resumes_identically() {
    let Some(shared) = shared("fbr_lowers_unit_losses_exports_a_loadable_file_and_resumes_identically") else {
        return;
    };
    let model = import_model(Family::MnistUnet, &shared.join("models/mnist-unet/model.safetensors"), None);
    let dir = std::env::temp_dir().join(format!("edadm-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("run.ckpt");
    let cut = dir.join("cut.ckpt");
    let full = run_fbr(&model, Some(&ckpt), false, Some((&cut, 7)));
    let r = &full.report;
    assert_eq!(r.units.len(), 31);
    // Reconstruction lowers the training loss (FBR's block + γ·layer objective, soft rounding,
    // QDrop) of most units and the held-out output loss (hard rounding) of many; every unit
    // keeps its reconstructed parameters exactly when they lowered the held-out loss, and the
    // whole model is never worse than its initialisation. (At 12 iterations hardening the
    // soft rounding often undoes the gain: the reason for the validation.)
    let trained = r.units.iter().filter(|u| u.train_last < u.train_first).count();
    let lowered = r.units.iter().filter(|u| u.block_after < u.block_before).count();
    let table: Vec<String> = r
        .units
        .iter()
        .map(|u| {
            format!(
                "{} train {:.3e}->{:.3e} held-out {:.3e}->{:.3e}",
                u.name, u.train_first, u.train_last, u.block_before, u.block_after
            )
        })
        .collect();
    println!("{}", table.join("\n"));
    assert!(trained * 2 > r.units.len(), "training loss fell in only {trained} of {} units", r.units.len());
    assert!(lowered * 4 > r.units.len(), "held-out loss fell in only {lowered} of {} units", r.units.len());
    for u in &r.units {
        assert_eq!(u.kept, u.block_after < u.block_before, "{}", u.name);
    }
    assert!(r.eps_mse_final <= r.eps_mse_init);
    let improved: HashSet<&str> = r.units.iter().filter(|u| u.kept).map(|u| u.name.as_str()).collect();
    assert!(!improved.is_empty());

    // The exported file loads and runs.
    let out = dir.join("q.edq");
    quant::export::write(&out, &model, &full.model, Vec::new()).unwrap();
    let qm = Model::open(&out).unwrap();
    assert!(qm.is_quantized());
    let x = synthetic_set(&model, 2, 3);
    let mut s = Session::new(&qm, &SessionOptions::batch(2)).unwrap();
    assert!(s.run(&x.x, &x.t).unwrap().iter().all(|v| v.is_finite()));

    // Resuming from the copy taken after 7 units gives the same model and the same reports.
    std::fs::copy(&cut, &ckpt).unwrap();
    let resumed = run_fbr(&model, Some(&ckpt), true, None);
    assert_eq!(resumed.model, full.model);
    // Same units, same decisions; the losses agree up to the order of candle's threaded
    // reductions.
    assert_eq!(resumed.report.units.len(), full.report.units.len());
    for (a, b) in resumed.report.units.iter().zip(&full.report.units) {
        assert_eq!((&a.name, a.kept), (&b.name, b.kept));
        for (x, y) in [(a.block_before, b.block_before), (a.block_after, b.block_after)] {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-12), "{}: {x} vs {y}", a.name);
        }
    }
    // The same model gives the same ε-MSE up to the order of candle's threaded reductions.
    let (a, b) = (resumed.report.eps_mse_final, full.report.eps_mse_final);
    println!("final ε-MSE: resumed {a:e}, uninterrupted {b:e}");
    assert!((a - b).abs() <= 1e-5 * b, "final ε-MSE {a} after resuming, {b} uninterrupted");
    // A checkpoint of other settings is refused.
    let net = Net::from_model(&model, &Device::Cpu).unwrap();
    let set = synthetic_set(&model, 24, 5);
    let other = small_config(4, Recon::Fbr, 20);
    let err = quant::quantize(&net, &set, &other, Some(&ckpt), true, None, &mut |_| {}).err().unwrap();
    assert!(
        err.to_string().contains("other settings (") && err.to_string().contains("structure.wbits: 8 → 4"),
        "{err}"
    );
    // So is one of another calibration set, or of another FP model of the same architecture
    // (one weight changed), each named.
    let same = small_config(8, Recon::Fbr, 20);
    let err = quant::quantize(&net, &synthetic_set(&model, 24, 6), &same, Some(&ckpt), true, None, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another calibration set") && !err.contains("FP model"), "{err}");
    let mut other_net = Net::from_model(&model, &Device::Cpu).unwrap();
    let w = other_net.params.iter_mut().find_map(|p| p.weight.as_mut()).unwrap();
    *w = w.affine(1.001, 0.0).unwrap();
    let err = quant::quantize(&other_net, &set, &same, Some(&ckpt), true, None, &mut |_| {}).err().unwrap().to_string();
    assert!(err.contains("another FP model") && !err.contains("calibration"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bias correction removes the mean output shift of every layer's rounded weights: with only the
/// weights quantized (activations FP), each corrected conv's mean output error per channel on
/// the calibration samples is far below the uncorrected one.
#[test]
fn bias_correction_removes_the_mean_output_error_of_rounded_weights() {
    let Some(shared) = shared("bias_correction_removes_the_mean_output_error_of_rounded_weights") else {
        return;
    };
    let model = import_model(Family::MnistUnet, &shared.join("models/mnist-unet/model.safetensors"), None);
    let net = Net::from_model(&model, &Device::Cpu).unwrap();
    let set = synthetic_set(&model, 16, 7);
    let rows: Vec<usize> = (0..set.len()).collect();
    let mut cfg = small_config(4, Recon::None, 0);
    cfg.holdout = 0;
    let plain = quant::quantize(&net, &set, &cfg, None, false, None, &mut |_| {}).unwrap().model;
    let means = quant::input_means(&net, &set, &rows, 8).unwrap();
    let fixed = quant::bias_corrected(&net, &plain, &means).unwrap();
    let weighted: Vec<usize> = (0..net.graph.nodes.len()).filter(|&i| plain.weight(i).is_some()).collect();
    let nodes: HashSet<usize> = weighted.iter().copied().collect();
    // Every layer alone: weights quantized, inputs FP, so each output error is its own weights'.
    let only = quant::Only { acts: HashSet::new(), weights: nodes.clone() };
    let [c, h, w] = set.sample_shape;
    let x = tensor4(&set.x, [set.len(), c, h, w], &Device::Cpu).unwrap();
    let fp = quant::hooks::FpRecorder::new(&nodes);
    net.forward(x.clone(), &set.t, &fp).unwrap();
    let fp = fp.take();
    let mean_shift = |q: &QModel| -> Vec<f64> {
        let weights = q.weight_tensors(&net).unwrap();
        let hooks = QHooks::new(q, &weights).only(&only).recording(&nodes);
        let mut env = net.inputs(x.clone(), &set.t).unwrap();
        // Each layer fed the FP model's own input: run node by node on the FP environment.
        net.run(0..net.graph.nodes.len(), &mut env, &quant::hooks::FpRecorder::new(&HashSet::new())).unwrap();
        weighted
            .iter()
            .map(|&ni| {
                let y = to_vec(&net.node(ni, &env, &hooks).unwrap()).unwrap();
                let f = to_vec(&fp[&ni]).unwrap();
                let dims = fp[&ni].dims().to_vec();
                let ch = dims[1];
                let inner = f.len() / (dims[0] * ch);
                let mut s = vec![0f64; ch];
                for (i, (a, b)) in y.iter().zip(&f).enumerate() {
                    s[(i / inner) % ch] += f64::from(a - b);
                }
                s.iter().map(|v| (v / (f.len() / ch) as f64).abs()).sum::<f64>() / ch as f64
            })
            .collect()
    };
    let (before, after) = (mean_shift(&plain), mean_shift(&fixed));
    let (sb, sa): (f64, f64) = (before.iter().sum(), after.iter().sum());
    println!("mean |shift| summed over {} layers: {sb:.3e} uncorrected, {sa:.3e} corrected", weighted.len());
    assert!(sa < 0.2 * sb, "mean |shift| summed over layers: {sb:.3e} uncorrected, {sa:.3e} corrected");
    let corrected = weighted.iter().filter(|&&ni| fixed.weight(ni).unwrap().bias.is_some()).count();
    assert_eq!(corrected, weighted.len(), "every quantized conv and linear (transposed too) is corrected");
}

/// The parity on in-repo files, so that it never skips in a bare clone: the built-in fmnist-ddpm
/// model (`models/fmnist-builtin.edq`, the shared model's architecture) at W8A8 and W4A8,
/// and the format's tiny golden model (every op kind) at W8A8.
#[test]
fn in_repo_models_run_on_the_integer_runtime_like_the_fake_quant_forward() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let builtin = Model::open(root.join("models/fmnist-builtin.edq")).unwrap();
    for wbits in [8, 4] {
        let (net, q) = init_only(&builtin, wbits);
        parity(&builtin, &net, &q, &format!("fmnist-builtin W{wbits}A8"));
    }
    // Mixed precision (`--w8-layers`): the named layer keeps 8-bit weights in a W4A8 file, every
    // other inner layer 4-bit; the runtime runs each at its own width. An unknown name or a
    // node without weights is refused.
    let net = Net::from_model(&builtin, &Device::Cpu).unwrap();
    let weighted: Vec<usize> = (0..net.graph.nodes.len()).filter(|&i| net.graph.nodes[i].op.is_weighted()).collect();
    let mid = weighted[weighted.len() / 2];
    let mut cfg = small_config(4, Recon::None, 0);
    cfg.structure.w8_layers = vec![net.graph.nodes[mid].name.clone()];
    let q = quant::quantize(&net, &synthetic_set(&builtin, 24, 5), &cfg, None, false, None, &mut |_| {}).unwrap().model;
    let bits: Vec<u32> = weighted[1..weighted.len() - 1].iter().map(|&i| q.weight(i).unwrap().bits).collect();
    assert_eq!(q.weight(mid).unwrap().bits, 8);
    assert_eq!(bits.iter().filter(|&&b| b == 8).count(), 1, "{bits:?}");
    assert_eq!(bits.iter().filter(|&&b| b == 4).count(), bits.len() - 1, "{bits:?}");
    parity(&builtin, &net, &q, "fmnist-builtin W4A8, one layer at 8-bit weights");
    let not_weighted = net.graph.nodes.iter().find(|n| !n.op.is_weighted()).unwrap().name.clone();
    for bad in ["no.such.layer".to_string(), not_weighted] {
        cfg.structure.w8_layers = vec![bad.clone()];
        let r = quant::quantize(&net, &synthetic_set(&builtin, 24, 5), &cfg, None, false, None, &mut |_| {});
        assert!(r.is_err_and(|e| e.to_string().contains(&bad)), "--w8-layers {bad} accepted");
    }
    let tiny = Model::open(root.join("formats/tests/golden/tiny-fp32.edq")).unwrap();
    let (net, q) = init_only(&tiny, 8);
    parity(&tiny, &net, &q, "tiny golden W8A8");
    // A file whose numbers are wrong but whose structure is valid is never written, nor run into
    // NaN images: a weight scale of NaN, ∞, 0 or subnormal.
    for bad in [f32::NAN, f32::INFINITY, 0.0, -1e-40] {
        let mut q = q.clone();
        let w = q.nodes.iter_mut().flatten().find_map(|n| match n {
            quant::NodeQ::Weight(w) => Some(w),
            _ => None,
        });
        w.unwrap().groups[0].scales[0] = bad;
        // Refused by the writer (and, planted in a file, by the reader: tools/tests/hostile.rs).
        let e = quant::export::build(&tiny, &q, Vec::new()).expect_err("refused");
        assert!(e.to_string().contains("weight scale"), "{bad}: {e}");
    }
}
