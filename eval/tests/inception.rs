//! The FID network against an independent NumPy forward pass (`eval/tools/inception_numpy.py
//! features INCEPTION.pt t10k-images-idx3-ubyte.gz 4 OUT`, written from the archive's own
//! TorchScript code) on the first four MNIST test images.

use std::path::PathBuf;

use edadm_eval::images::Images;
use edadm_eval::inception::{FEATURES, Inception};

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("EDADM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let ok = dir.join("models/fid-inception/inception-2015-12-05.pt").is_file()
        && dir.join("data/mnist/t10k-images-idx3-ubyte.gz").is_file();
    ok.then_some(dir)
}

#[test]
fn features_match_an_independent_numpy_forward() {
    let Some(dir) = shared() else {
        println!("skipped: ../shared (or $EDADM_SHARED) with models/fid-inception and data/mnist is absent");
        return;
    };
    let net = Inception::load(&dir.join("models/fid-inception/inception-2015-12-05.pt")).unwrap();
    // 21.8 M parameters in the archive; folding the batch norms leaves the conv weights (packed
    // with some padding to the microkernel's rows).
    assert!(net.num_params() >= 21_700_000, "{}", net.num_params());
    let imgs = Images::read(&dir.join("data/mnist/t10k-images-idx3-ubyte.gz")).unwrap().truncate(4);
    let got = net.features(&imgs, 2, &mut |_| {}).unwrap();
    let want: Vec<f32> =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/inception-numpy-mnist-t10k-0-3.f32"))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
    assert_eq!(got.len(), 4 * FEATURES);
    let max_abs = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("max |edadm − numpy| = {max_abs:.3e} (features up to {max_ref:.3})");
    assert!(max_abs < 1e-4 * max_ref.max(1.0), "features differ from the numpy forward by {max_abs}");
}
