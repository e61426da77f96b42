#!/usr/bin/env python3
"""bench/proxy/run.sh's raw results (JSON lines) as the tables of bench/README.md.

  report.py RESULTS.jsonl
"""
import json
import statistics
import sys


def load(path):
    rows = [json.loads(line) for line in open(path)]
    by = {}
    for r in rows:
        by.setdefault((r['kind'], r['n']), []).append(r['data'])
    return by


def ms(seconds):
    return None if seconds is None else seconds * 1e3


def fmt(v, unit='', digits=1):
    if v is None:
        return '—'
    return f'{v:,.{digits}f}{unit}'


def ratio(a, b):
    if a is None or not b:
        return '—'
    return f'**{a / b:.2f}**'


def first_full(d):
    # kube-proxy's log names each sync; otherwise the histogram at the first scrape after it
    # (one observation, unless a second sync came before the scrape).
    log = d.get('syncs_from_log')
    if log and log[0][0]:
        return log[0][1] if len(log[0]) == 2 else log[0][3]
    f = d['first_full']
    return f['sum'] / f['count'] if f['count'] else None


def one(d, key):
    h = d[key]
    return h['sum'] / h['count'] if h['count'] else None


def main():
    by = load(sys.argv[1])
    ns = sorted({n for kind, n in by if kind in ('skein', 'kube-proxy')})
    out = []
    out.append('| N | | kube-proxy | skein | ratio |')
    out.append('|---|---|---|---|---|')
    for n in ns:
        kp = by.get(('kube-proxy', n), [None])[0]
        sk = by.get(('skein', n), [None])[0]
        if not kp or not sk:
            continue
        kp_full, sk_full = ms(first_full(kp)), ms(first_full(sk))
        kp_part = ms(one(kp, 'partial'))
        # skein's syncs that changed something, from its debug log: [full, changed, transactions, s].
        # The one that put the changed address in the kernel: logged when nft monitor saw it.
        changes = [x for x in sk.get('change_syncs_from_log', []) if not x[0] and x[1]]
        seen = sk.get('change_seen_at')
        if seen and changes and len(changes[0]) > 4:
            changes.sort(key=lambda x: abs((x[4] or 0) - float(seen)))
        sk_part = ms(changes[0][3]) if changes else ms(one(sk, 'partial'))
        kp_prog, sk_prog = ms(one(kp, 'programming')), ms(one(sk, 'programming'))
        # Kernel memory the rules hold: what the proxy's memory cgroup is still charged for once
        # the process has exited (its rules stay in the kernel), per 1,000 Services.
        kp_kmem = kp['cgroup_kmem_kb_after_exit'] / n * 1000 / 1024
        sk_kmem = sk['cgroup_kmem_kb_after_exit'] / n * 1000 / 1024
        kp_slab = (kp['slab_kb_after'] - kp['slab_kb_before']) / n * 1000 / 1024
        sk_slab = (sk['slab_kb_after'] - sk['slab_kb_before']) / n * 1000 / 1024
        rows = [
            ('full sync (first, all N)', fmt(kp_full, ' ms'), fmt(sk_full, ' ms'), ratio(sk_full, kp_full)),
            ('one endpoint changed: partial sync', fmt(kp_part, ' ms', 2), fmt(sk_part, ' ms', 2), ratio(sk_part, kp_part)),
            ('one endpoint changed: programming latency (own metric)', fmt(kp_prog, ' ms'), fmt(sk_prog, ' ms'), ratio(sk_prog, kp_prog)),
            ('one endpoint changed: API request to the address in the kernel (nft monitor)', fmt(ms(kp.get('end_to_end_change_s')), ' ms'), fmt(ms(sk.get('end_to_end_change_s')), ' ms'), ratio(sk.get('end_to_end_change_s'), kp.get('end_to_end_change_s'))),
            ('kernel memory held by the rules, per 1,000 Services (memory cgroup)', fmt(kp_kmem, ' MiB', 2), fmt(sk_kmem, ' MiB', 2), ratio(sk_kmem, kp_kmem)),
            ('/proc/meminfo Slab growth, per 1,000 Services', fmt(kp_slab, ' MiB', 2), fmt(sk_slab, ' MiB', 2), ratio(sk_slab, kp_slab)),
            ('process RSS after the change', fmt(kp['rss_kb'] / 1024, ' MB'), fmt(sk['rss_kb'] / 1024, ' MB'), ratio(sk['rss_kb'], kp['rss_kb'])),
            ('from process start to the first sync done', fmt(kp['first_sync_after_start_s'], ' s', 2), fmt(sk['first_sync_after_start_s'], ' s', 2), ratio(sk['first_sync_after_start_s'], kp['first_sync_after_start_s'])),
        ]
        for i, (what, a, b, r) in enumerate(rows):
            out.append(f'| {n if i == 0 else ""} | {what} | {a} | {b} | {r} |')
    out.append('')
    out.append('skein at 100 changes/s for 20 s (one endpoint per change, `proxy.min_sync_interval` 10 ms):')
    out.append('')
    out.append('| N | changes sent | API answer p50 / p99 | programming latency p50 | p99 | syncs (partial / full) | RSS after |')
    out.append('|---|---|---|---|---|---|---|')
    for n in ns:
        sk = by.get(('skein', n), [None])[0]
        if not sk:
            continue
        c, p = sk['churn'], sk['churn_programming']
        out.append(
            f"| {n} | {c['changes']} ({c['errors']} errors) in {c['seconds']:.1f} s | {c['api_ms_p50']:.1f} / {c['api_ms_p99']:.1f} ms "
            f"| {fmt(ms(p['p50']), ' ms')} | {fmt(ms(p['p99']), ' ms')} "
            f"| {int(sk['churn_partial']['count'])} / {int(sk['churn_full']['count'])} | {sk['rss_kb_after_churn'] / 1024:.1f} MB |"
        )
    conn = {}
    for (kind, n), items in by.items():
        if kind.startswith('conn-'):
            conn[(kind[5:], n)] = [d['per_second'] for d in items]
    if conn:
        out.append('')
        out.append('Connection setup (connect, then close with a reset), median of 5 alternating runs of 3 s:')
        out.append('')
        out.append('| Services | direct to the pod | through the ClusterIP | ClusterIP ÷ direct |')
        out.append('|---|---|---|---|')
        med = {k: statistics.median(v) for k, v in conn.items()}
        for n in sorted({n for _, n in conn}):
            d, c = med.get(('direct', n)), med.get(('clusterip', n))
            out.append(f'| {n:,} | {fmt(d, "/s", 0)} | {fmt(c, "/s", 0)} | {ratio(c, d)} |')
        big = max(n for _, n in conn)
        if big > 1 and ('clusterip', 1) in med and ('clusterip', big) in med:
            out.append('')
            out.append(
                f"ClusterIP with {big:,} ÷ with 1: **{med[('clusterip', big)] / med[('clusterip', 1)]:.3f}**; "
                f"direct at {big:,} ÷ direct at 1 (the machine's drift between the two): "
                f"{med[('direct', big)] / med[('direct', 1)]:.3f}"
            )
            out.append('')
            out.append('Raw (connections/s): ' + '; '.join(
                f'{kind} at {n}: ' + ', '.join(f'{v:.0f}' for v in vals) for (kind, n), vals in sorted(conn.items())))
    pair = {(what, way): items for (kind, way), items in by.items() for what in ('clusterip', 'direct') if kind == f'pair-{what}'}
    if pair:
        programs = {d['services']: d for (kind, _), items in by.items() if kind == 'pair-program' for d in items}
        n = max(programs) - 1 if programs else 0
        out.append('')
        out.append(
            f'Connection setup with 1 and with {n:,} Services side by side: one client connecting through two routers '
            'programmed by skein\'s proxy in-process, one connection to each in turn, 5 runs of 6 s; then the routers '
            'swap tables and again:')
        out.append('')
        out.append(f'| | routers | with 1 Service | with {n + 1:,} | {n + 1:,} ÷ 1 per run | median |')
        out.append('|---|---|---|---|---|---|')
        both = {}
        for what, label in (('clusterip', 'through the ClusterIP'), ('direct', 'direct to the same routers\' servers')):
            for way in (1, 2):
                runs = pair.get((what, way))
                if not runs:
                    continue
                ratios = [r[1]['per_second'] / r[0]['per_second'] for r in runs]
                rate_1 = statistics.median(r[0]['per_second'] for r in runs)
                rate_n = statistics.median(r[1]['per_second'] for r in runs)
                both.setdefault(what, []).append(statistics.median(ratios))
                routers = '1 Service in router 1' if way == 1 else '1 Service in router 2'
                out.append(
                    f"| {label} | {routers} | {rate_1:,.0f}/s | {rate_n:,.0f}/s | {', '.join(f'{x:.3f}' for x in ratios)} | {statistics.median(ratios):.3f} |")
        for what, label in (('clusterip', 'ClusterIP'), ('direct', 'direct')):
            if len(both.get(what, [])) == 2:
                a, b = both[what]
                out.append('')
                out.append(f'{label}, {n + 1:,} ÷ 1, both ways (geometric mean of the two medians): **{(a * b) ** 0.5:.3f}**')
        syncs = ', '.join(f"{c:,} Services {p['sync_ms']:.0f} ms" for c, p in sorted(programs.items()))
        out.append('')
        out.append(f'The routers\' syncs (last of each size): {syncs}.')
    ins = sorted((n, d[0]) for (kind, n), d in by.items() if kind == 'insync')
    if ins:
        out.append('')
        out.append('skein\'s proxy in-process (`skein-bench-proxy sync`: `ProxyState` + `Netlink` in a fresh namespace):')
        out.append('')
        out.append('| N | full: dump | plan | apply (transactions) | total | unchanged resync: dump + plan/apply | one change: plan | apply | total (median of 20, max) |')
        out.append('|---|---|---|---|---|---|---|---|---|')
        for n, d in ins:
            f, r, c = d['full'], d['resync_unchanged'], d['change']
            out.append(
                f"| {n:,} | {f['dump_ms']:.1f} ms | {f['plan_ms']:.1f} ms | {f['apply_ms']:.1f} ms ({f['transactions']}) | {f['total_ms']:.1f} ms "
                f"| {r['dump_ms']:.1f} + {r['plan_and_apply_ms']:.1f} ms | {c['plan_ms_median']:.2f} ms | {c['apply_ms_median']:.2f} ms "
                f"| {c['total_ms_median']:.2f} ms ({c['total_ms_max']:.2f}) |"
            )
    sh = by.get(('shapes', 10000))
    if sh:
        d = sh[0]
        out.append('')
        out.append(f"ClusterIP dispatch shapes, {d['elements']:,} elements (chains for their verdicts made first: {d['chains_ms']:.0f} ms):")
        out.append('')
        out.append('| shape | load 10k elements (median of 3) | runs | change one element (median of 20) |')
        out.append('|---|---|---|---|')
        for key, label in (('hash_map', '(a) one hash map'), ('interval_shards', f"(b) {d['shards']} interval maps")):
            s = d[key]
            out.append(
                f"| {label} | {s['load_ms_median']:.1f} ms | {', '.join(f'{v:.1f}' for v in s['load_ms'])} | {s['change_ms_median']:.2f} ms |"
            )
    cr = sorted((n, d[0]) for (kind, n), d in by.items() if kind == 'create')
    if cr:
        out.append('')
        out.append('Objects created through the API (32 requests at a time): ' + '; '.join(
            f"{n - d['from']:,} Services + slices in {d['seconds']:.1f} s" for n, d in cr))
    print('\n'.join(out))


if __name__ == '__main__':
    main()
