#!/usr/bin/env bash
# Writes the models of benches/benches/unet.rs into DIR: the CIFAR-10 DDPM and fmnist-ddpm
# architectures with random weights (f32), quantized to W8A8, W7A8 and W4A8 without reconstruction
# (16 random calibration samples from 10-step DDIM trajectories: enough for valid activation
# ranges; speed depends only on the shapes; every inner layer at the file's width — no `--w8-auto`
# layers, which the 4-bit default keeps at 8 bits). About 3 minutes on 2 cores.
#   benches/tools/unet_models.sh /tmp/unet-models && EDADM_BENCH_MODELS=/tmp/unet-models cargo bench -p edadm-benches --bench unet
set -euo pipefail
dir=${1:?usage: unet_models.sh DIR}
mkdir -p "$dir"
cd "$(dirname "$0")/../.."
cargo build --release -p edadm-cli
E=target/release/edadm
for arch in cifar10 fmnist; do
  preset=$arch; [ "$arch" = fmnist ] && preset=fmnist-ddpm
  [ -f "$dir/$arch-f32.edq" ] || $E import --family ddpm --preset "$preset" --random-weights 1 -o "$dir/$arch-f32.edq"
  for w in 8 7 4; do
    o="$dir/$arch-w${w}a8.edq"
    [ -f "$o" ] || $E quantize "$dir/$arch-f32.edq" --calib random --n-calib 16 --steps 10 --sample-batch 8 \
      --recon none --weight-round nearest --w8-auto 0 --wbits $w --holdout 8 -o "$o"
  done
done
