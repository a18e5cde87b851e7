//! The candle interpreter's FP forward against the runtime's f32 engine on both shared models.

mod common;

use candle_core::Device;
use common::*;
use edadm_quantizer::import::Family;
use edadm_quantizer::net::{Fp, Net, tensor4, to_vec};
use edadm_runtime::Model;

fn check(model: &Model, t: &[f32]) {
    let n = t.len();
    let [c, h, w] = model.sample_shape();
    let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.3).collect();
    let want = run(model, n, &x, t, &[]).output().to_vec();
    let net = Net::from_model(model, &Device::Cpu).unwrap();
    let got = to_vec(&net.forward(tensor4(&x, [n, c, h, w], &Device::Cpu).unwrap(), t, &Fp).unwrap()).unwrap();
    let e = rel_err(&got, &want);
    assert!(e < 1e-4, "max error {e} of the output magnitude");
}

#[test]
fn fmnist_ddpm_fp_forward_matches_the_runtime() {
    let Some(shared) = shared("fmnist_ddpm_fp_forward_matches_the_runtime") else { return };
    let model = import_model(Family::Ddpm, &shared.join("models/fmnist-ddpm/model.safetensors"), Some("fmnist-ddpm"));
    check(&model, &[999.0, 500.0, 3.0]);
}

#[test]
fn mnist_unet_fp_forward_matches_the_runtime() {
    let Some(shared) = shared("mnist_unet_fp_forward_matches_the_runtime") else { return };
    let model = import_model(Family::MnistUnet, &shared.join("models/mnist-unet/model.safetensors"), None);
    check(&model, &[999.0, 10.0]);
}
