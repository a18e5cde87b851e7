#!/usr/bin/env python3
"""Summarise criterion results (target/criterion/*/*/*/new/) as throughput tables.

usage: criterion_table.py GROUP [--peak G_PER_S] [--unit G]
Prints one row per benchmark input and one column per variant: G elements/s (MAC/s for the
kernel benches) from criterion's mean estimate, and, with --peak, the percentage of it."""
import json, os, sys

def main():
    args = sys.argv[1:]
    group = args[0]
    peak = float(args[args.index('--peak') + 1]) if '--peak' in args else None
    root = os.path.join(os.environ.get('CARGO_TARGET_DIR', 'target'), 'criterion', group)
    rows, cols = {}, []
    for variant in sorted(os.listdir(root)):
        vdir = os.path.join(root, variant)
        if not os.path.isdir(vdir) or variant == 'report':
            continue
        for case in sorted(os.listdir(vdir)):
            new = os.path.join(vdir, case, 'new')
            if not os.path.isfile(os.path.join(new, 'estimates.json')):
                continue
            mean_ns = json.load(open(os.path.join(new, 'estimates.json')))['mean']['point_estimate']
            bench = json.load(open(os.path.join(new, 'benchmark.json')))
            elems = (bench.get('throughput') or {}).get('Elements')
            if not elems:
                continue
            rows.setdefault(case, {})[variant] = elems / mean_ns  # G elements per second
            if variant not in cols:
                cols.append(variant)
    order = ['ref', 'avx2', 'avxvnni', 'avx512', 'avx512vnni', 'neon', 'dotprod', 'i8mm']
    cols.sort(key=lambda c: order.index(c) if c in order else len(order))
    print('| case | ' + ' | '.join(cols) + ' |')
    print('|---' * (len(cols) + 1) + '|')
    for case in rows:
        cells = []
        for c in cols:
            v = rows[case].get(c)
            if v is None:
                cells.append('–')
            elif peak and c in ('avx512vnni', 'avxvnni'):
                cells.append(f'{v:.1f} ({100 * v / peak:.0f} %)')
            else:
                cells.append(f'{v:.1f}')
        print(f'| `{case}` | ' + ' | '.join(cells) + ' |')

if __name__ == '__main__':
    main()
