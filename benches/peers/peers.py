#!/usr/bin/env python3
"""edadm beside ONNX Runtime and PyTorch on the same CPU, in one run: the speed table of the README.

A measuring tool for a scratch virtual environment (numpy, torch, onnx, onnxruntime); never a
dependency of edadm and never run by CI. For each architecture it builds the Ho et al. DDPM UNet
in PyTorch with the definition of `shared/models/fmnist-ddpm/train.py` (the same graph edadm's
`--family ddpm` importer reads; random weights, as `benches/tools/unet_models.sh` gives edadm —
speed depends only on the shapes), exports it to ONNX
(opset 17), quantizes that with ONNX Runtime's static QDQ quantizer the way a user would
(per-channel s8 weights, u8 activations on the inputs of every Conv / MatMul / Gemm, MinMax
ranges from a few random (x_t, t)), and times one UNet evaluation of every contender:

  edadm W8A8   `edadm bench MODELS/ARCH-w8a8.edq --json` (the integer runtime)
  ORT INT8     the QDQ model in onnxruntime (all graph optimisations)
  (--reduce-range) edadm W7A8 (MODELS/ARCH-w7a8.edq) and ORT INT8 with 7-bit weights
  (--w4)       edadm W4A8 (MODELS/ARCH-w4a8.edq), set beside ORT INT8 (which has no 4-bit weights)
  edadm f32    `edadm bench MODELS/ARCH-f32.edq --json`
  ORT FP32     the exported f32 model in onnxruntime
  PyTorch FP32 the module itself (inference mode)

Every contender gets the same threads and batch. The contenders alternate within each round
(the machines are shared and drift by ±20 % between rounds); each round records the median and
the minimum of `--runs` calls after `--warmup` calls; the table reports the median over rounds of
the per-round medians, and the minimum over everything, and the ratios peer / edadm of those
medians (> 1: edadm is faster).

  benches/tools/unet_models.sh /tmp/unet-models          # ARCH-f32.edq, ARCH-w8a8.edq
  python3 benches/peers/peers.py --models /tmp/unet-models --shared ../shared \
      --arch cifar10 fmnist --batch 1 8 --threads 2 --rounds 3 --json peers.json
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

import numpy as np

ARCHS = {
    # ermongroup/ddim configs/cifar10.yml
    'cifar10': dict(ch=128, out_ch=3, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                    in_channels=3, resolution=32),
    # shared/models/fmnist-ddpm/config.json
    'fmnist': dict(ch=32, out_ch=1, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,), in_channels=1,
                   resolution=32),
}


def torch_model(arch, shared):
    import torch
    sys.path.insert(0, os.path.join(shared, 'models', 'fmnist-ddpm'))
    import train  # noqa: E402  (the reference definition of the UNet)
    train.FAST = False
    torch.manual_seed(0)
    return train.Model(dropout=0.0, **ARCHS[arch]).eval()


def inputs(arch, batch, seed):
    c, r = ARCHS[arch]['in_channels'], ARCHS[arch]['resolution']
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, c, r, r)).astype(np.float32), rng.integers(0, 1000, batch).astype(np.float32)


def export(arch, m, work, calib_n, reduce_ranges):
    """The f32 ONNX model and one QDQ model per entry of `reduce_ranges` (False: 8-bit weights, True: 7-bit)."""
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    fp = os.path.join(work, f'{arch}-fp32.onnx')
    x, t = inputs(arch, 2, 0)
    torch.onnx.export(m, (torch.from_numpy(x), torch.from_numpy(t)), fp, input_names=['x', 't'],
                      output_names=['eps'], dynamic_axes={'x': {0: 'n'}, 't': {0: 'n'}, 'eps': {0: 'n'}},
                      opset_version=17, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = [dict(zip(('x', 't'), inputs(arch, 1, 100 + i))) for i in range(calib_n)]

        def get_next(self):
            return self.items.pop() if self.items else None

    qs = []
    for rr in reduce_ranges:
        q = os.path.join(work, f'{arch}-int8{"-rr" if rr else ""}.onnx')
        quantize_static(fp, q, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=['Conv', 'MatMul', 'Gemm'], calibrate_method=CalibrationMethod.MinMax,
                        reduce_range=rr)
        qs.append(q)
    return fp, qs


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])


def time_calls(f, warmup, runs):
    for _ in range(warmup):
        f()
    ms = []
    for _ in range(runs):
        s = time.perf_counter()
        f()
        ms.append((time.perf_counter() - s) * 1e3)
    return statistics.median(ms), min(ms)


def edadm_bench(exe, model, batch, threads, runs):
    out = subprocess.run([exe, 'bench', model, '--batch', str(batch), '--threads', str(threads), '--runs', str(runs),
                          '--steps', '0', '--json'], check=True, capture_output=True, text=True).stdout
    e = json.loads(out)['eval_ms']
    return e['median'], e['min']


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', required=True, help='folder of ARCH-f32.edq and ARCH-w8a8.edq (unet_models.sh)')
    ap.add_argument('--shared', default='../shared')
    ap.add_argument('--edadm', default='target/release/edadm')
    ap.add_argument('--arch', nargs='+', default=['cifar10', 'fmnist'], choices=sorted(ARCHS))
    ap.add_argument('--batch', nargs='+', type=int, default=[1, 8])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--runs', type=int, default=20, help='timed calls per contender and round')
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--calib', type=int, default=16, help='random (x_t, t) for the MinMax ranges')
    ap.add_argument('--reduce-range', action='store_true',
                    help='also edadm W7A8 (MODELS/ARCH-w7a8.edq) beside ORT INT8 with 7-bit weights (reduce_range, '
                         "ONNX Runtime's advice for CPUs without VNNI, where its u8×s8 products may saturate)")
    ap.add_argument('--w4', action='store_true',
                    help='also edadm W4A8 (MODELS/ARCH-w4a8.edq; ORT INT8 has no 4-bit weights, so it is compared with '
                         'ORT INT8)')
    ap.add_argument('--no-fp', action='store_true', help='only the integer contenders')
    ap.add_argument('--work', default=None, help='folder for the ONNX files (default: a temporary one)')
    ap.add_argument('--json', default=None, help='also write every measurement here')
    a = ap.parse_args()
    kinds = ('w8a8',) + (('w7a8',) if a.reduce_range else ()) + (('w4a8',) if a.w4 else ()) + \
        (() if a.no_fp else ('f32',))
    for p in [a.edadm] + [os.path.join(a.models, f'{x}-{k}.edq') for x in a.arch for k in kinds]:
        if not os.path.isfile(p):
            sys.exit(f'peers.py: {p}: no such file (build edadm; write the models with benches/tools/unet_models.sh)')
    import torch, onnxruntime
    torch.set_num_threads(a.threads)
    work = a.work or tempfile.mkdtemp(prefix='edadm-peers-')
    os.makedirs(work, exist_ok=True)
    names = ['edadm W8A8', 'ORT INT8']
    if a.reduce_range:
        names += ['edadm W7A8', 'ORT INT8 7-bit w']
    if a.w4:
        names += ['edadm W4A8']
    if not a.no_fp:
        names += ['edadm f32', 'ORT FP32', 'PyTorch FP32']
    rows, record = [], []
    for arch in a.arch:
        m = torch_model(arch, a.shared)
        fp, qs = export(arch, m, work, a.calib, [False] + ([True] if a.reduce_range else []))
        sessions = {'ORT INT8': ort_session(qs[0], a.threads), 'ORT FP32': ort_session(fp, a.threads)}
        if a.reduce_range:
            sessions['ORT INT8 7-bit w'] = ort_session(qs[1], a.threads)
        for b in a.batch:
            x, t = inputs(arch, b, 1)
            feed = {'x': x, 't': t}
            tx, tt = torch.from_numpy(x), torch.from_numpy(t)

            def pytorch():
                with torch.inference_mode():
                    m(tx, tt)

            run = {
                'edadm W8A8': lambda: edadm_bench(a.edadm, os.path.join(a.models, f'{arch}-w8a8.edq'), b, a.threads,
                                                  a.runs),
                'ORT INT8': lambda: time_calls(lambda: sessions['ORT INT8'].run(None, feed), a.warmup, a.runs),
                'edadm W7A8': lambda: edadm_bench(a.edadm, os.path.join(a.models, f'{arch}-w7a8.edq'), b, a.threads,
                                                  a.runs),
                'ORT INT8 7-bit w': lambda: time_calls(lambda: sessions['ORT INT8 7-bit w'].run(None, feed), a.warmup,
                                                       a.runs),
                'edadm W4A8': lambda: edadm_bench(a.edadm, os.path.join(a.models, f'{arch}-w4a8.edq'), b, a.threads,
                                                  a.runs),
                'edadm f32': lambda: edadm_bench(a.edadm, os.path.join(a.models, f'{arch}-f32.edq'), b, a.threads,
                                                 a.runs),
                'ORT FP32': lambda: time_calls(lambda: sessions['ORT FP32'].run(None, feed), a.warmup, a.runs),
                'PyTorch FP32': lambda: time_calls(pytorch, a.warmup, a.runs),
            }
            got = {n: [] for n in names}
            for r in range(a.rounds):
                for n in names:
                    med, mn = run[n]()
                    got[n].append((med, mn))
                    record.append(dict(arch=arch, batch=b, round=r, contender=n, median_ms=med, min_ms=mn))
                    print(f'{arch} batch {b} round {r + 1}/{a.rounds} {n}: {med:.2f} ms (min {mn:.2f})',
                          file=sys.stderr)
            rows.append((arch, b, {n: (statistics.median(v[0] for v in got[n]), min(v[1] for v in got[n]))
                                   for n in names}))
    print(f'\n{a.threads} threads, median of {a.rounds} alternating rounds of {a.runs} calls (minimum), ms per UNet '
          f'evaluation; onnxruntime {onnxruntime.__version__}, torch {torch.__version__}\n')
    pairs = [('ORT INT8', 'edadm W8A8'), ('ORT INT8 7-bit w', 'edadm W7A8'), ('ORT INT8', 'edadm W4A8'),
             ('ORT FP32', 'edadm f32')]
    pairs = [(p, e) for p, e in pairs if p in names and e in names]
    print('| model | batch | ' + ' | '.join(names) + ' | ' + ' | '.join(f'{p} / {e}' for p, e in pairs) + ' |')
    print('|---' * (len(names) + len(pairs) + 2) + '|')
    for arch, b, res in rows:
        cells = [f'{res[n][0]:.2f} ({res[n][1]:.2f})' for n in names]
        ratios = [f'{res[p][0] / res[e][0]:.2f}×' for p, e in pairs]
        print(f'| {arch} | {b} | ' + ' | '.join(cells + ratios) + ' |')
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(dict(threads=a.threads, rounds=a.rounds, runs=a.runs, onnxruntime=onnxruntime.__version__,
                           torch=torch.__version__, measurements=record), f, indent=1)


if __name__ == '__main__':
    main()
