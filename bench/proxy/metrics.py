#!/usr/bin/env python3
"""Reads Prometheus text-format scrapes for bench/proxy/run.sh.

  metrics.py value FILE NAME              a sample's value (summed over label sets), 0 if absent
  metrics.py delta BEFORE AFTER NAME      a histogram's change: {"count", "sum", "mean", "p50",
                                          "p99", "buckets"} (quantiles interpolated within
                                          buckets, as Prometheus' histogram_quantile does)
"""
import json
import math
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def parse(path):
    samples = {}
    with open(path) as f:
        for line in f:
            if line.startswith('#'):
                continue
            m = LINE.match(line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or '', m.group(3)
            try:
                v = float(value)
            except ValueError:
                continue
            samples.setdefault(name, []).append((labels, v))
    return samples


def total(samples, name):
    return sum(v for _, v in samples.get(name, []))


def buckets(samples, name):
    out = {}
    for labels, v in samples.get(name + '_bucket', []):
        m = re.search(r'le="([^"]+)"', labels)
        if m:
            le = math.inf if m.group(1) == '+Inf' else float(m.group(1))
            out[le] = out.get(le, 0) + v
    return out


def quantile(q, cumulative):
    """cumulative: sorted [(upper bound, cumulative count)]."""
    if not cumulative or cumulative[-1][1] == 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 0)
        lower, below = upper, count
    return lower


def main():
    cmd = sys.argv[1]
    if cmd == 'value':
        print(total(parse(sys.argv[2]), sys.argv[3]))
    elif cmd == 'delta':
        a, b, name = parse(sys.argv[2]), parse(sys.argv[3]), sys.argv[4]
        count = total(b, name + '_count') - total(a, name + '_count')
        s = total(b, name + '_sum') - total(a, name + '_sum')
        ba, bb = buckets(a, name), buckets(b, name)
        cumulative = sorted((le, bb[le] - ba.get(le, 0)) for le in bb)
        print(json.dumps({
            'count': count,
            'sum': s,
            'mean': s / count if count else None,
            'p50': quantile(0.5, cumulative),
            'p99': quantile(0.99, cumulative),
            'buckets': [[le if not math.isinf(le) else '+Inf', c] for le, c in cumulative],
        }))
    else:
        sys.exit(f'metrics.py: unknown command {cmd}')


if __name__ == '__main__':
    main()
