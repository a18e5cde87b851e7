#!/usr/bin/env python3
"""Side-by-side sample grids FP | W8A8 | W4A8 from the same noise, out of docs/ablation.sh's outputs.

    ablation_grids.py OUT [DEST]   (DEST default docs/samples)

For each model (fmnist, mnist) whose FP row and EDA-DM rows (tdac+fbr) exist, reads the first
36 images of each row's samples.idx (`edadm eval --out`: image i of every row comes from the
same noise, seed 0) and writes DEST/ablation-MODEL-fp-w8a8-w4a8.png: three 6×6 panels, pixels
scaled ×2. Standard library only (an uncompressed-IDX reader, a zlib PNG writer).
"""
import os
import struct
import sys
import zlib

out = sys.argv[1] if len(sys.argv) > 1 else "ablation-out"
dest = sys.argv[2] if len(sys.argv) > 2 else "docs/samples"
COLS, ROWS, SCALE, PAD, GAP = 6, 6, 2, 2, 12


def read_idx(path):
    data = open(path, "rb").read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise SystemExit(f"{path}: not a u8 IDX file")
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    n, h, w = shape[0], shape[1], shape[2]
    c = shape[3] if dims == 4 else 1
    body = data[4 + 4 * dims:]
    if len(body) != n * h * w * c:
        raise SystemExit(f"{path}: {len(body)} bytes of pixels, header says {n}×{h}×{w}×{c}")
    if c != 1:
        raise SystemExit(f"{path}: {c} channels; this script draws grayscale grids")
    return n, h, w, body


def panel(path):
    n, h, w, px = read_idx(path)
    if n < COLS * ROWS:
        raise SystemExit(f"{path}: {n} images, the grid needs {COLS * ROWS}")
    ph, pw = ROWS * (h * SCALE + PAD) + PAD, COLS * (w * SCALE + PAD) + PAD
    img = [[128] * pw for _ in range(ph)]
    for i in range(COLS * ROWS):
        r, c = divmod(i, COLS)
        y0, x0 = PAD + r * (h * SCALE + PAD), PAD + c * (w * SCALE + PAD)
        for y in range(h * SCALE):
            row = img[y0 + y]
            src = i * h * w + (y // SCALE) * w
            for x in range(w * SCALE):
                row[x0 + x] = px[src + x // SCALE]
    return img


def write_png(path, rows):
    h, w = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(r) for r in rows)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    tmp = path + ".part"
    open(tmp, "wb").write(png)
    os.replace(tmp, path)


os.makedirs(dest, exist_ok=True)
for m in ("fmnist", "mnist"):
    rows = [f"{m}-fp", f"{m}-w8a8-tdac-fbr", f"{m}-w4a8-tdac-fbr"]
    paths = [os.path.join(out, r, "samples.idx") for r in rows]
    if not all(os.path.exists(p) for p in paths):
        print(f"{m}: skipped (missing {[p for p in paths if not os.path.exists(p)]})")
        continue
    panels = [panel(p) for p in paths]
    if len({len(p) for p in panels}) != 1:
        raise SystemExit(f"{m}: the rows' images differ in size")
    grid = [sum(([255] * GAP + r if k else r for k, r in enumerate(rs)), []) for rs in zip(*panels)]
    target = os.path.join(dest, f"ablation-{m}-fp-w8a8-w4a8.png")
    write_png(target, grid)
    print(f"wrote {target} ({len(grid[0])}×{len(grid)}): FP | W8A8 EDA-DM | W4A8 EDA-DM, first 36 samples")
