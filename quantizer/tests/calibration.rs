//! Calibration on the shared models: FP trajectories, the TDAC feature map, selection and the
//! saved set.

mod common;

use common::*;
use edadm_quantizer::calib::{self, Method};
use edadm_quantizer::import::Family;
use edadm_runtime::sampler::{SamplerConfig, SamplerKind, Skip};

fn ddim(steps: usize) -> SamplerConfig {
    SamplerConfig { kind: SamplerKind::Ddim, steps, skip: Skip::Quad, eta: 0.0, clip_x0: None, seed: 3, first_image: 0 }
}

#[test]
fn tdac_on_fmnist_ddpm_trajectories() {
    let Some(shared) = shared("tdac_on_fmnist_ddpm_trajectories") else { return };
    let model = import_model(Family::Ddpm, &shared.join("models/fmnist-ddpm/model.safetensors"), Some("fmnist-ddpm"));
    let (fv, what) = calib::feature_value(model.graph()).unwrap();
    assert_eq!(what, "input of mid.attn_1");
    // 6 trajectories of 10 steps in batches of 4 (the last batch is partial).
    let mut last = 0;
    let tr = calib::collect(&model, ddim(10), 6, 4, Some(fv), &mut |d, n| {
        assert!(d > last && d <= n);
        last = d;
    })
    .unwrap();
    assert_eq!((tr.x.len(), tr.features.len(), tr.feature_shape), (10, 10, [64, 64]));
    assert!(tr.x.iter().all(|x| x.len() == 6 * 32 * 32));
    assert!(tr.features.iter().all(|f| f.len() == 6 * 64 * 64));
    // Quad skip over 10 steps, denoising order: the first call is the noisiest timestep.
    assert!(tr.t.windows(2).all(|w| w[0] >= w[1]) && tr.t[0] > 700.0);
    // Batches are independent of the batch size: a trajectory is a function of its seed and
    // index only.
    let one = calib::collect(&model, ddim(10), 1, 1, Some(fv), &mut |_, _| {}).unwrap();
    for k in [0, 5, 9] {
        let d = rel_err(&one.x[k], &tr.x[k][..32 * 32]);
        assert!(d < 1e-5, "step {k}: {d}");
    }
    let set = calib::select(&tr, Method::Tdac { lambda: 1.2, eps: calib::Eps::Value(3.0) }, 0).unwrap();
    let s = set.tdac.as_ref().unwrap();
    assert_eq!(s.counts.iter().sum::<usize>(), 6);
    assert_eq!(set.per_step(), s.counts);
    // Density: consecutive late steps have nearly identical features; the noisiest step is
    // the most different from the others, so it has the largest variety.
    let vmax = s.variety.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(s.variety[0], vmax, "{:?}", s.variety);
}

#[test]
fn mnist_unet_features_are_the_first_middle_block_output() {
    let Some(shared) = shared("mnist_unet_features_are_the_first_middle_block_output") else { return };
    let model = import_model(Family::MnistUnet, &shared.join("models/mnist-unet/model.safetensors"), None);
    let (_, what) = calib::feature_value(model.graph()).unwrap();
    assert_eq!(what, "output of mid.0");
}
