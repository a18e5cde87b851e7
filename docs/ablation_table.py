#!/usr/bin/env python3
"""Prints the ablation table (markdown) from the outputs of docs/ablation.sh.

    ablation_table.py [OUT] [--record FILE]

OUT (default ablation-out) is docs/ablation.sh's output folder. With --record, the rows found
in OUT are merged into FILE (JSON, one entry per row: the measured numbers, wall time and file
size; rows of FILE that OUT lacks are kept), and the table is printed from the merged record —
so a table measured over several sessions, on machines that do not keep OUT, stays whole.
docs/ablation-rows.json is the record behind docs/RESULTS.md.
"""
import json
import os
import sys

args = sys.argv[1:]
record = None
if "--record" in args:
    i = args.index("--record")
    if i + 1 >= len(args):
        raise SystemExit("--record needs a file")
    record = args[i + 1]
    del args[i:i + 2]
out = args[0] if args else "ablation-out"
MODELS = ("fmnist", "mnist")
ROWS = [("uniform", "block", "Q-Diffusion"), ("random", "block", ""), ("tdac", "block", ""),
        ("uniform", "fbr", ""), ("tdac", "fbr", "EDA-DM")]


def names():
    for m in MODELS:
        yield m, f"{m}-fp", None, None, None
        for w in (8, 4):
            for c, r, tag in ROWS:
                yield m, f"{m}-w{w}a8-{c}-{r}", w, c, (r, tag)


def wall_time(t):
    """Seconds of `edadm quantize`, from docs/ablation.sh's OUTPUT.time: one number per run; a
    `resumed` line marks a run interrupted part-way, whose first part was not timed (None)."""
    if not os.path.exists(t):
        return None
    lines = [l.strip() for l in open(t) if l.strip()]
    return None if "resumed" in lines else sum(float(l) for l in lines)


def measure(name, fp_file):
    """One row from OUT, or None where OUT does not have it."""
    p = os.path.join(out, name + ".json")
    if not os.path.exists(p):
        return None
    j = json.load(open(p))
    edq = os.path.join(out, (fp_file or name) + ".edq")
    t = os.path.join(out, name + ".edq.time")
    return {
        "fid": j["fid"]["value"], "n": j["fid"]["n"], "reference_n": j["fid"]["reference_n"],
        "crop": j["fid"].get("crop"), "sampler": j["model"]["sampler"],
        "psnr_vs_fp_db": j.get("psnr_vs_fp_db"), "ssim_vs_fp": j.get("ssim_vs_fp"),
        "eps_mse_mean": j.get("eps_mse_mean"),
        "quantize_s": wall_time(t),
        "file_bytes": os.path.getsize(edq) if os.path.exists(edq) else None,
    }


rows = {}
if record and os.path.exists(record):
    rows = json.load(open(record))
for m, name, *_ in names():
    r = measure(name, m if name.endswith("-fp") else None)
    if r:
        rows[name] = r
if record:
    tmp = record + ".part"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, record)


def mib(r):
    return "—" if r.get("file_bytes") is None else f"{r['file_bytes'] / 2**20:.2f} MiB"


def num(v, fmt):
    return "—" if v is None else format(v, fmt)


print("| model | bits | calibration | reconstruction | FID ↓ | PSNR vs FP (dB) ↑ | SSIM vs FP ↑ | ε-MSE vs FP ↓ | quantization wall time | file |")
print("|---|---|---|---|---|---|---|---|---|---|")
for m, name, w, c, rt in names():
    r = rows.get(name)
    if not r:
        continue
    if w is None:
        print(f"| {m} | FP32 | — | — | {r['fid']:.2f} | — | — | — | — | {mib(r)} |")
        continue
    label = f"{rt[0]} ({rt[1]})" if rt[1] else rt[0]
    s = r.get("quantize_s")
    print(f"| {m} | W{w}A8 | {c} | {label} | {r['fid']:.2f} | {num(r['psnr_vs_fp_db'], '.2f')} | "
          f"{num(r['ssim_vs_fp'], '.4f')} | {num(r['eps_mse_mean'], '.3e')} | "
          f"{'—' if s is None else f'{s / 60:.1f} min'} | {mib(r)} |")
for m in MODELS:
    fp = rows.get(f"{m}-fp")
    if fp:
        crop = f", cropped to {fp['crop']}" if fp.get("crop") else ""
        print(f"\n{m}: N = {fp['n']} samples per row{crop} against {fp['reference_n']} reference images; "
              f"sampler {fp['sampler']}")
