#!/usr/bin/env python3
"""Loss curve of a model trained by `edadm train`, as SVG, from its metadata:
    edadm inspect models/fmnist-builtin.edq --json | models/plot_loss.py > models/fmnist-builtin-loss.svg
(`train.loss_per_100_steps`: the mean training loss of each 100 steps.)"""
import json
import math
import sys

m = json.load(sys.stdin)["metadata"]
loss = m["train.loss_per_100_steps"]
W, H, L, B, T, R = 640, 320, 60, 40, 20, 20
lo, hi = math.log10(min(loss)), math.log10(max(loss))
lo, hi = math.floor(lo * 4) / 4, math.ceil(hi * 4) / 4
x = lambda i: L + (W - L - R) * (i + 1) / len(loss)
y = lambda v: T + (H - T - B) * (hi - math.log10(v)) / (hi - lo)
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<rect width="{W}" height="{H}" fill="white"/>']
for e in range(int(lo * 4), int(hi * 4) + 1):
    v = 10 ** (e / 4)
    out.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
               f'<text x="{L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
steps = 100 * len(loss)
for s in range(0, steps + 1, 2000):
    xs = L + (W - L - R) * s / steps
    out.append(f'<line x1="{xs:.1f}" x2="{xs:.1f}" y1="{T}" y2="{H - B}" stroke="#eee"/>'
               f'<text x="{xs:.1f}" y="{H - B + 14}" text-anchor="middle">{s}</text>')
pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(loss))
out.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>')
out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">optimiser step</text>')
out.append(f'<text x="14" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 14 {(T + H - B) / 2})">'
           'training loss (mean of 100 steps, log scale)</text>')
out.append("</svg>")
print("\n".join(out))
