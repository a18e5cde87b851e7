#!/usr/bin/env python3
"""An independent forward pass of the FID Inception network in NumPy (no PyTorch), written from
the TorchScript archive's own code (`out_jit_module/code/__torch__/inceptionv3.py`), and an
independent Fréchet distance (NumPy, f64: eigh of Σ₂ then eigvalsh of Σ₂^½ Σ₁ Σ₂^½).

    inception_numpy.py features INCEPTION.pt IMAGES.idx[.gz] N OUT.f32
        pool3 features of the first N images (raw little-endian f32, N×2048)
    inception_numpy.py fid FEATS_A.f32 FEATS_B.f32 [SPLIT]
        the Fréchet distance between two raw f32 feature files (rows of 2048); with SPLIT, the
        first SPLIT rows of A against the rest of A

Preprocessing as edadm documents: (p − 128) / 128, bilinear resize to 299×299 with
align_corners=False semantics, grayscale repeated to three channels.
"""
import gzip
import pickle
import sys
import zipfile

import numpy as np


class _Obj:
    def __init__(self, cls):
        self.cls = cls
        self.state = {}

    def __setstate__(self, state):
        self.state = state

    def __getattr__(self, k):
        if k in ("cls", "state") or k.startswith("__"):
            raise AttributeError(k)
        return self.state[k]


def load(path):
    z = zipfile.ZipFile(path)
    root = min((n[: -len("data.pkl")] for n in z.namelist() if n.endswith("data.pkl")), key=len)

    class U(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                def rebuild(storage, offset, size, stride, *_):
                    key, numel = storage
                    a = np.frombuffer(z.read(f"{root}data/{key}"), dtype="<f4", count=numel)
                    return np.lib.stride_tricks.as_strided(
                        a[offset:], shape=size, strides=[4 * s for s in stride]).copy()
                return rebuild
            if module == "collections" and name == "OrderedDict":
                return dict
            if module == "torch":
                return name
            if module == "torch.jit._pickle" and name.startswith("build_"):
                return lambda items: list(items)
            return lambda *a: _Obj(f"{module}.{name}")

        def persistent_load(self, pid):
            return (pid[2], pid[4])

    # NEWOBJ calls cls.__new__(cls): give every class a real Python class.
    class U2(U):
        def find_class(self, module, name):
            f = U.find_class(self, module, name)
            if module.startswith("__torch__"):
                return type(name, (_Obj,), {"__new__": lambda c, *a: _Obj.__new__(c),
                                             "__init__": lambda s, *a: _Obj.__init__(s, name)})
            return f

    return U2(z.open(f"{root}data.pkl")).load()


def conv(x, layer):
    w = layer.weight
    stride = layer.stride
    pad = layer.padding
    ph, pw = (pad, pad) if isinstance(pad, int) else tuple(pad)
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    co, ci, kh, kw = w.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    y = np.einsum("chwij,ocij->ohw", win, w, optimize=True)
    # F.batch_norm(x, mean, var, None, beta, eps=1e-3) then ReLU, unfolded.
    y = (y - layer.mean[:, None, None]) / np.sqrt(layer.var[:, None, None] + 1e-3) + layer.beta[:, None, None]
    return np.maximum(y, 0)


def seq(x, s):
    i = 0
    while f"conv{'' if i == 0 else '_' + str(i)}" in s.state:
        x = conv(x, s.state[f"conv{'' if i == 0 else '_' + str(i)}"])
        i += 1
    return x


def max_pool(x, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::stride, ::stride].max(axis=(3, 4))


def avg_pool3(x):
    s = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1))), (3, 3), axis=(1, 2)).sum(axis=(3, 4))
    ones = np.pad(np.ones(x.shape[1:]), 1)
    cnt = np.lib.stride_tricks.sliding_window_view(ones, (3, 3)).sum(axis=(2, 3))
    return s / cnt


def forward(net, x):
    L = net.net.layers
    for name in ["conv", "conv_1", "conv_2"]:
        x = conv(x, getattr(L, name))
    x = max_pool(x, 2, 0)
    x = conv(conv(x, L.conv_3), L.conv_4)
    x = max_pool(x, 2, 0)
    for i in range(11):
        m = getattr(L, "mixed" if i == 0 else f"mixed_{i}")
        kind = type(m).__name__
        if kind in ("InceptionA", "InceptionC"):
            x = np.concatenate([conv(x, m.conv), seq(x, m.tower), seq(x, m.tower_1),
                                conv(avg_pool3(x), m.tower_2.conv)])
        elif kind == "InceptionB":
            x = np.concatenate([conv(x, m.conv), seq(x, m.tower), max_pool(x, 2, 0)])
        elif kind == "InceptionD":
            x = np.concatenate([seq(x, m.tower), seq(x, m.tower_1), max_pool(x, 2, 0)])
        elif kind == "InceptionE":
            a = conv(x, m.tower_conv)
            b = conv(conv(x, m.tower_1_conv), m.tower_1_conv_1)
            p = max_pool(x, 1, 1) if type(m.tower_2_pool).__name__ == "MaxPool2d" else avg_pool3(x)
            x = np.concatenate([conv(x, m.conv), conv(a, m.tower_mixed_conv), conv(a, m.tower_mixed_conv_1),
                                conv(b, m.tower_1_mixed_conv), conv(b, m.tower_1_mixed_conv_1),
                                conv(p, m.tower_2_conv)])
        else:
            raise SystemExit(f"unexpected block {kind}")
    return x.mean(axis=(1, 2))


def resize(plane, size=299):
    def taps(n_in):
        src = np.maximum((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        return i0, i1, src - i0
    y0, y1, ly = taps(plane.shape[0])
    x0, x1, lx = taps(plane.shape[1])
    top = plane[y0][:, x0] * (1 - lx) + plane[y0][:, x1] * lx
    bot = plane[y1][:, x0] * (1 - lx) + plane[y1][:, x1] * lx
    return top * (1 - ly)[:, None] + bot * ly[:, None]


def read_idx(path):
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    n, h, w = (int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(raw[16:], np.uint8).reshape(n, h, w)


def fid(fa, fb, split=None):
    """Fréchet distance in f64. Tr sqrt(S1 S2) from the symmetric form S2^1/2 S1 S2^1/2 (S2^1/2 by
    eigh of S2), a different route from edadm's (Cholesky + tridiagonal QL); the non-symmetric
    eigvals(S1 @ S2) of pytorch-fid's style is printed as well, it is noisy when a covariance is
    rank-deficient (fewer samples than 2048)."""
    a = np.fromfile(fa, "<f4").astype(np.float64).reshape(-1, 2048)
    if split is not None:
        a, b = a[:split], a[split:]
    else:
        b = np.fromfile(fb, "<f4").astype(np.float64).reshape(-1, 2048)
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s2)
    h = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(h @ s1 @ h), 0, None)).sum()
    base = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2)
    ev = np.linalg.eigvals(s1 @ s2)
    return float(base - 2 * tr), float(base - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


def main():
    if sys.argv[1] == "features":
        net = load(sys.argv[2])
        imgs = read_idx(sys.argv[3])[: int(sys.argv[4])]
        out = []
        for im in imgs:
            p = resize((im.astype(np.float64) - 128) / 128)
            out.append(forward(net, np.stack([p, p, p])))
        np.asarray(out, "<f4").tofile(sys.argv[5])
    elif sys.argv[1] == "fid":
        split = int(sys.argv[4]) if len(sys.argv) > 4 else None
        sym, nonsym = fid(sys.argv[2], sys.argv[3], split)
        print(f"{sym:.6f} (symmetric)  {nonsym:.6f} (eigvals of S1 S2)")


if __name__ == "__main__":
    main()
