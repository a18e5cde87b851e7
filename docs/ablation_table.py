#!/usr/bin/env python3
"""Prints the ablation table (markdown) from the outputs of docs/ablation.sh: ablation_table.py OUT"""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "ablation-out"
ROWS = [("uniform", "block", "Q-Diffusion"), ("random", "block", ""), ("tdac", "block", ""),
        ("uniform", "fbr", ""), ("tdac", "fbr", "EDA-DM")]


def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None


def secs(name):
    p = os.path.join(out, name + ".edq.time")
    return sum(float(l) for l in open(p) if l.strip()) if os.path.exists(p) else None


def mib(name):
    p = os.path.join(out, name + ".edq")
    return f"{os.path.getsize(p) / 2**20:.2f} MiB" if os.path.exists(p) else "—"


print("| model | bits | calibration | reconstruction | FID ↓ | PSNR vs FP (dB) ↑ | SSIM vs FP ↑ | ε-MSE vs FP ↓ | quantization wall time | file |")
print("|---|---|---|---|---|---|---|---|---|---|")
for m in ("fmnist", "mnist"):
    fp = load(f"{m}-fp")
    if fp:
        print(f"| {m} | FP32 | — | — | {fp['fid']['value']:.2f} | — | — | — | — | {mib(m)} |")
    for w in (8, 4):
        for c, r, tag in ROWS:
            name = f"{m}-w{w}a8-{c}-{r}"
            j = load(name)
            if not j:
                continue
            s = secs(name)
            label = f"{r} ({tag})" if tag else r
            ssim = j.get("ssim_vs_fp")
            print(f"| {m} | W{w}A8 | {c} | {label} | {j['fid']['value']:.2f} | {j['psnr_vs_fp_db']:.2f} | "
                  f"{'—' if ssim is None else f'{ssim:.4f}'} | {j['eps_mse_mean']:.3e} | "
                  f"{'—' if s is None else f'{s / 60:.1f} min'} | {mib(name)} |")
    if fp:
        print(f"\n{m}: N = {fp['fid']['n']} samples per row against {fp['fid']['reference_n']} reference images; "
              f"sampler {fp['model']['sampler']}")
