#!/usr/bin/env python3
"""Peers for fmnist-ddpm measured from exactly edadm's noise, against edadm's FP samples.

Scratch-venv tools (numpy, torch, onnx, onnxruntime, safetensors, pillow); never a dependency
of edadm. Every command samples DDIM 100 steps, quad skip, eta 0 (the ddim repository's
`generalized_steps`, as `edadm sample`) from the initial noise `edadm sample --noise-out`
wrote, and writes the final samples as .npy:

  ort   ONNX Runtime static INT8: QDQ, per-channel s8 weights, u8 activations on the inputs of
        every Conv/MatMul/Gemm, MinMax (or --method percentile) calibration on an edadm
        calibration set; --reduce-range for CPUs without VNNI (u8s8 saturates on AVX2).
  qdq   the same recipe in exact float arithmetic in PyTorch (quantize-dequantize at the same
        points as edadm: inputs of every conv/linear but the output conv, split decoder skip
        convs, attention q/k/v/probabilities), optionally one range per group of sampler steps
        (--groups G): what a time-step-aware quantizer could reach.
  psnr  PSNR of sample sets over all pixels in [0, 1] (edadm eval's measure), per-image median.

  E=target/release/edadm; S="--steps 100 --sampler ddim --skip quad --eta 0 --seed 0"
  $E sample fmnist.edq -n 1000 $S -o fp.png --raw fp.npy --noise-out z.npy
  $E calibrate fmnist.edq --calib random --n-calib 256 -o calib.safetensors
  python3 docs/peers/fmnist_peers.py ort --shared ../shared --calib calib.safetensors --noise z.npy -o ort.npy
  python3 docs/peers/fmnist_peers.py psnr ort.npy fp.npy
"""
import argparse, math, os, sys, time

import numpy as np


def ddim(eval_eps, z, betas, seq, group_of_step=None, set_group=None):
    ab = np.concatenate([[1.0], np.cumprod(1 - betas.astype(np.float64))]).astype(np.float32)
    x = z.copy()
    for k in reversed(range(len(seq))):
        t, tn = seq[k], (seq[k - 1] if k > 0 else -1)
        at, an = ab[t + 1], ab[tn + 1]
        if set_group:
            set_group(group_of_step(k))
        e = eval_eps(x, np.full(len(x), t, np.float32))
        x = np.sqrt(an) * ((x - e * np.sqrt(1 - at)) / np.sqrt(at)) + np.sqrt(1 - an) * e
    return x.astype(np.float32)


def reference(shared):
    sys.path.insert(0, os.path.join(shared, 'models', 'fmnist-ddpm'))
    import post, train  # noqa: E402
    train.FAST = False
    m = post.load_model(os.path.join(shared, 'models', 'fmnist-ddpm', 'model.safetensors'))
    return m, train, post


def cmd_ort(a):
    import torch, onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from safetensors.numpy import load_file
    m, train, post = reference(a.shared)
    fp = a.work + '/fmnist.onnx'
    os.makedirs(a.work, exist_ok=True)
    torch.onnx.export(m, (torch.randn(2, 1, 32, 32), torch.tensor([5.0, 700.0])), fp, input_names=['x', 't'],
                      output_names=['eps'], dynamic_axes={'x': {0: 'n'}, 't': {0: 'n'}, 'eps': {0: 'n'}},
                      opset_version=17, dynamo=False)
    cal = load_file(a.calib)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(cal['x']):
                return None
            d = {'x': cal['x'][self.i:self.i + 32], 't': cal['t'][self.i:self.i + 32]}
            self.i += 32
            return d
    qp = a.work + '/fmnist-int8.onnx'
    t0 = time.time()
    quantize_static(fp, qp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=a.reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=['Conv', 'MatMul', 'Gemm'],
                    calibrate_method={'minmax': CalibrationMethod.MinMax,
                                      'percentile': CalibrationMethod.Percentile}[a.method])
    print(f'quantize_static: {time.time() - t0:.1f} s', file=sys.stderr)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    s = ort.InferenceSession(qp if not a.fp else fp, so, providers=['CPUExecutionProvider'])
    z = np.load(a.noise)
    seq = post.quad_seq(1000, 100)
    out = [ddim(lambda x, t: s.run(None, {'x': x, 't': t})[0], z[i:i + 100], train.betas_linear().numpy(), seq)
           for i in range(0, len(z), 100)]
    np.save(a.output, np.concatenate(out))


def cmd_qdq(a):
    import torch
    from safetensors.numpy import load_file
    torch.set_num_threads(a.threads)
    m, train, post = reference(a.shared)
    seq = post.quad_seq(1000, 100)
    step_of_t = {}
    for k, t in enumerate(seq):
        step_of_t.setdefault(t, k)
    G = a.groups
    group = [0]
    gos = lambda k: min(k * G // len(seq), G - 1)  # noqa: E731

    class QP:
        def __init__(self):
            self.lo, self.hi, self.observe = [math.inf] * G, [-math.inf] * G, True

        def __call__(self, x):
            g = group[0]
            if self.observe:
                self.lo[g] = min(self.lo[g], x.min().item())
                self.hi[g] = max(self.hi[g], x.max().item())
                return x
            lo, hi = min(self.lo[g], 0.0), max(self.hi[g], 0.0)
            d = max((hi - lo) / 255, 1e-8)
            zp = round(-lo / d)
            return (torch.clamp(torch.round(x / d) + zp, 0, 255) - zp) * d
    qps = {}
    qp = lambda n: qps.setdefault(n, QP())  # noqa: E731

    def wq(w):  # per output channel, symmetric signed 8-bit
        d = (2 * w.abs().flatten(1).max(1).values.clamp(min=1e-8) / 255).view(-1, *([1] * (w.dim() - 1)))
        return torch.clamp(torch.round(w / d), -128, 127) * d
    names = {mod: n for n, mod in m.named_modules()}
    for mod, n in names.items():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.weight.data = wq(mod.weight.data)
            if n == 'conv_out':
                continue  # edadm keeps the output conv's input in f32, as the official code
            if n.startswith('up') and n.endswith('nin_shortcut'):
                mod.register_forward_pre_hook(lambda mod, i, n=n: (torch.cat(
                    [qp(n + '.a')(i[0][:, :mod.split]), qp(n + '.b')(i[0][:, mod.split:])], 1),))
            else:
                mod.register_forward_pre_hook(lambda mod, i, n=n: (qp(n)(i[0]),))
    block_in = m.up[-1].block[-1].out_channels
    for lvl in reversed(range(len(m.up))):
        for blk in m.up[lvl].block:
            blk.nin_shortcut.split = block_in
            block_in = blk.out_channels

    def attn(self, x):
        n = names[self]
        h = self.norm(x)
        q, k, v = qp(n + '.q_')(self.q(h)), qp(n + '.k_')(self.k(h)), qp(n + '.v_')(self.v(h))
        b, c, hh, ww = q.shape
        w = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww)) * (int(c) ** -0.5)
        w = qp(n + '.p_')(torch.softmax(w, dim=2))
        return x + self.proj_out(torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww))
    train.AttnBlock.forward = attn
    cal = load_file(a.calib)
    cx, ct = torch.from_numpy(cal['x']), torch.from_numpy(cal['t'])
    steps = [step_of_t[int(t)] for t in cal['t']]
    with torch.no_grad():
        for g in range(G):
            idx = [i for i, k in enumerate(steps) if gos(k) == g]
            group[0] = g
            for i in range(0, len(idx), 64):
                m(cx[idx[i:i + 64]], ct[idx[i:i + 64]])
    for p in qps.values():
        for g in range(G):
            if p.lo[g] == math.inf:
                raise SystemExit(f'step group {g} has no calibration sample: use fewer --groups')
        p.observe = False

    def eps(x, t):
        with torch.no_grad():
            return m(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    z = np.load(a.noise)
    out = [ddim(eps, z[i:i + 100], train.betas_linear().numpy(), seq, gos, lambda g: group.__setitem__(0, g))
           for i in range(0, len(z), 100)]
    np.save(a.output, np.concatenate(out))


def cmd_psnr(a):
    unit = lambda v, lo, hi: (np.clip(v, lo, hi) - lo) / (hi - lo)  # noqa: E731
    x, ref = np.load(a.samples), np.load(a.reference)
    n = min(len(x), len(ref), a.n or len(x))
    mse = ((unit(x[:n], -1, 1) - unit(ref[:n], -1, 1)) ** 2).reshape(n, -1).mean(1)
    print(f'{a.samples} vs {a.reference}, {n} images: PSNR {10 * math.log10(1 / mse.mean()):.2f} dB, '
          f'median image {10 * np.log10(1 / np.median(mse)):.2f} dB, worst image MSE {mse.max():.2e}')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    for name in ('ort', 'qdq'):
        p = sub.add_parser(name)
        p.add_argument('--shared', default='../shared')
        p.add_argument('--calib', required=True, help='an edadm calibration set (.safetensors)')
        p.add_argument('--noise', required=True, help='edadm sample --noise-out')
        p.add_argument('--threads', type=int, default=2)
        p.add_argument('-o', '--output', required=True)
    o = sub.choices['ort']
    o.add_argument('--method', default='minmax', choices=['minmax', 'percentile'])
    o.add_argument('--reduce-range', action='store_true')
    o.add_argument('--fp', action='store_true', help='the FP ONNX graph (checks the export)')
    o.add_argument('--work', default='peers-work')
    sub.choices['qdq'].add_argument('--groups', type=int, default=1)
    p = sub.add_parser('psnr')
    p.add_argument('samples')
    p.add_argument('reference')
    p.add_argument('-n', type=int, default=0)
    a = ap.parse_args()
    {'ort': cmd_ort, 'qdq': cmd_qdq, 'psnr': cmd_psnr}[a.cmd](a)


if __name__ == '__main__':
    main()
