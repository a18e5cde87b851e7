//! Importer + f32 engine against the golden outputs of `shared/models/*/golden.safetensors`
//! (PyTorch for fmnist-ddpm, numpy for mnist-unet): the network output and the named
//! intermediate feature maps within 1e-4 of each tensor's max magnitude.

mod common;

use common::*;
use edadm_quantizer::import::Family;

const TOL: f32 = 1e-4;

#[test]
fn fmnist_ddpm_matches_pytorch() {
    let Some(shared) = shared("fmnist_ddpm_matches_pytorch") else { return };
    let dir = shared.join("models/fmnist-ddpm");
    let model = import_model(Family::Ddpm, &dir.join("model.safetensors"), Some("fmnist-ddpm"));
    let g = dir.join("golden.safetensors");
    let (_, x) = golden(&g, "x");
    let (_, t) = golden(&g, "t");
    // (golden name, node whose output it is)
    let taps = [
        ("temb_sinusoid", "temb.sinusoid"),
        ("temb", "temb.dense.1"),
        ("conv_in", "conv_in"),
        ("down_0_block_0", "down.0.block.0.add"),
        ("down_0_downsample", "down.0.downsample.conv"),
        ("down_1_attn_0", "down.1.attn.0.add"),
        ("mid_block_1", "mid.block_1.add"),
        ("mid_attn_1", "mid.attn_1.add"),
        ("mid_block_2", "mid.block_2.add"),
        ("up_0_block_2", "up.0.block.2.add"),
    ];
    let keep: Vec<&str> = taps.iter().map(|t| t.1).collect();
    let s = run(&model, 4, &x, &t, &keep);
    let (shape, eps) = golden(&g, "eps");
    let err = rel_err(s.output(), &eps);
    println!("fmnist-ddpm eps: max error {err:.2e} of max |eps| (shape {shape:?})");
    assert!(err < TOL, "eps error {err}");
    for (name, node) in taps {
        let (_, want) = golden(&g, name);
        let got = s.value(value_of(&model, node)).unwrap();
        let err = rel_err(got, &want);
        println!("fmnist-ddpm {name}: {err:.2e}");
        assert!(err < TOL, "{name} error {err}");
    }
    // The README's sanity values.
    assert!((s.output()[16 * 32 + 16] - -0.84078).abs() < 1e-4);
}

#[test]
fn mnist_unet_matches_numpy_from_safetensors_and_pth() {
    let Some(shared) = shared("mnist_unet_matches_numpy_from_safetensors_and_pth") else { return };
    let dir = shared.join("models/mnist-unet");
    let g = dir.join("golden.safetensors");
    let (_, x) = golden(&g, "x");
    let (_, t) = golden(&g, "t");
    let (_, eps) = golden(&g, "eps");
    // `mid0` in golden.safetensors holds its bytes in [N, H, W, C] order although its header
    // says [4, 80, 3, 3]: reference.py saves a non-contiguous numpy view (the transposed conv
    // output) and safetensors.numpy writes its raw buffer. The reference's own NCHW tensor is the
    // transpose of the stored bytes (checked with numpy: max difference 4e-7 after transposing,
    // 8.8 before). Read it as NHWC.
    let (shape, stored) = golden(&g, "mid0");
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let mut mid0 = vec![0f32; stored.len()];
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    mid0[((i * c + ch) * h + y) * w + x] = stored[((i * h + y) * w + x) * c + ch];
                }
            }
        }
    }
    let mut outputs = Vec::new();
    for file in ["model.safetensors", "model.pth"] {
        let model = import_model(Family::MnistUnet, &dir.join(file), None);
        // The data range settled by measurement (docs/RESULTS.md).
        assert_eq!(
            model.metadata().get_f64_array(edadm_format::metadata::keys::MODEL_DATA_RANGE),
            Some(&[0.0, 1.0][..])
        );
        let s = run(&model, 4, &x, &t, &["mid.0.relu_out"]);
        let (e1, e2) =
            (rel_err(s.output(), &eps), rel_err(s.value(value_of(&model, "mid.0.relu_out")).unwrap(), &mid0));
        println!("mnist-unet from {file}: eps {e1:.2e}, mid0 {e2:.2e}");
        assert!(e1 < TOL && e2 < TOL, "{file}: eps {e1}, mid0 {e2}");
        outputs.push(s.output().to_vec());
    }
    assert_eq!(outputs[0], outputs[1], "the .pth and .safetensors imports compute the same thing");
}
