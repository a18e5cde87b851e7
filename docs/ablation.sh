#!/usr/bin/env bash
# The ablation table of docs/RESULTS.md (issue 7): FP, and W8A8 / W4A8 ×
# {uniform+block (Q-Diffusion), random+block, tdac+block, uniform+fbr, tdac+fbr (EDA-DM)}
# on fmnist-ddpm and mnist-unet, each row scored by `edadm eval` (FID of N samples against the
# test split, PSNR / SSIM and ε-MSE against the FP model from the same noise).
#
# Resumable: every step skips an output that exists, and an interrupted quantization continues
# from its checkpoint. Run from the repository root:
#   docs/ablation.sh [fmnist|mnist ...]        (default: both)
# Environment: SHARED (default ../shared), FMNIST_TEST (the Fashion-MNIST test images, Debian
# `dataset-fashion-mnist`), OUT (default ablation-out), N (samples per row, default 1000),
# IT_fmnist / IT_mnist (reconstruction iterations per unit, default 50 / 200), THREADS (2).
set -euo pipefail

SHARED=${SHARED:-../shared}
FMNIST_TEST=${FMNIST_TEST:-/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz}
OUT=${OUT:-ablation-out}
N=${N:-1000}
THREADS=${THREADS:-2}
IT_fmnist=${IT_fmnist:-50}
IT_mnist=${IT_mnist:-200}
INCEPTION=$SHARED/models/fid-inception/inception-2015-12-05.pt
E=${E:-target/release/edadm}
# The sampler of calibration and evaluation, for both models: DDIM 100 steps, quad spacing, η 0.
SAMPLER=(--sampler ddim --steps 100 --skip quad --eta 0)

[ -x "$E" ] || cargo build --release -p edadm-cli
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/progress.log"; }
# `timed OUTPUT.time cmd...`: run, then append its wall time in seconds (the table sums the
# lines; a `resumed` line, written when a quantization continues from its checkpoint, makes it
# unknown, since the interrupted part never finished to be timed).
timed() {
  local t=$1; shift
  local s; s=$(date +%s)
  "$@"
  echo $(( $(date +%s) - s )) >> "$t"
}

ref_stats() { # name, images
  local st=$OUT/ref-$1.safetensors
  [ -f "$st" ] && return
  log "reference statistics of $2"
  # Two samples are the least the command scores; the statistics are what it is run for.
  $E eval --samples "$2" -n 2 --reference "$2" --inception "$INCEPTION" --threads "$THREADS" \
    --save-ref-stats "$st" --json > /dev/null
}

model() { # M
  local M=$1 IT; IT=IT_$M; IT=${!IT}
  local fp=$OUT/$M.edq
  if [ ! -f "$fp" ]; then
    log "import $M"
    case $M in
      fmnist) $E import --family ddpm --preset fmnist-ddpm "$SHARED/models/fmnist-ddpm/model.safetensors" -o "$fp" ;;
      mnist) $E import --family mnist-unet "$SHARED/models/mnist-unet/model.pth" -o "$fp" ;;
    esac
  fi
  for C in tdac uniform random; do
    local cs=$OUT/$M-calib-$C.safetensors
    [ -f "$cs" ] && continue
    log "calibration $M $C"
    # TDAC at CIFAR's ε 3.0, as the recorded rows were made (the default is now the median of
    # the measured step-pair distances).
    timed "$cs.time" $E calibrate "$fp" --calib "$C" --n-calib 256 --eps 3 "${SAMPLER[@]}" -o "$cs"
  done
  local ref=$OUT/ref-$M.safetensors
  local ev=(--reference "$ref" --inception "$INCEPTION" -n "$N" "${SAMPLER[@]}" --seed 0 --threads "$THREADS"
            --cache "$OUT/cache" --json)
  # fmnist-ddpm was trained on the 28×28 images zero-padded to 32×32: its samples are cropped
  # back to 28×28 before FID against the unpadded test split.
  [ "$M" = fmnist ] && ev+=(--crop 28)
  [ -f "$OUT/$M-fp.json" ] || { log "eval $M FP"; $E eval --model "$fp" "${ev[@]}" --out "$OUT/$M-fp" > "$OUT/$M-fp.json.part" && mv "$OUT/$M-fp.json.part" "$OUT/$M-fp.json"; }
  for W in 8 4; do
    for CR in uniform-block random-block tdac-block uniform-fbr tdac-fbr; do
      local C=${CR%-*} R=${CR#*-} name=$M-w${W}a8-$CR
      local q=$OUT/$name.edq
      if [ ! -f "$q" ]; then
        log "quantize $name ($IT iterations per unit)"
        # A resumed run's first part was not timed: `resumed` marks its wall time unknown.
        local resume=(); [ -f "$q.ckpt" ] && { resume=(--resume); echo resumed >> "$q.time"; }
        # EDA-DM's own initialisation, as the recorded rows were made (the default recipe since
        # issue 18 adds percentile ranges, bias correction and an f32 output layer).
        timed "$q.time" $E quantize "$fp" --calib-set "$OUT/$M-calib-$C.safetensors" --wbits "$W" --recon "$R" \
          --act-init mse --bias-correction false --fp-output-layer false --fp-input-layer false \
          --iters "$IT" --batch 32 --report "$OUT/rep-$name" "${resume[@]}" -o "$q"
      fi
      [ -f "$OUT/$name.json" ] && continue
      log "eval $name"
      $E eval --model "$q" --fp "$fp" "${ev[@]}" --out "$OUT/$name" > "$OUT/$name.json.part"
      mv "$OUT/$name.json.part" "$OUT/$name.json"
    done
  done
}

models=("$@"); [ ${#models[@]} -eq 0 ] && models=(fmnist mnist)
for M in "${models[@]}"; do
  case $M in
    fmnist) ref_stats fmnist "$FMNIST_TEST" ;;
    mnist) ref_stats mnist "$SHARED/data/mnist/t10k-images-idx3-ubyte.gz" ;;
    *) echo "unknown model $M (fmnist, mnist)" >&2; exit 1 ;;
  esac
  model "$M"
done
log "done: $(ls "$OUT"/*.json | wc -l) rows; docs/ablation_table.py $OUT prints the table"
