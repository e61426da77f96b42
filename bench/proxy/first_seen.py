#!/usr/bin/env python3
"""Waits for an address to appear in the nftables ruleset of this network namespace.

  first_seen.py ADDRESS TIMEOUT_SECONDS

Follows `nft monitor` and prints the Unix time of the first line that names ADDRESS (the
endpoint a change put into the rules), or nothing after TIMEOUT_SECONDS. Run under `ip netns
exec`. nft monitor reads the ruleset before it listens (seconds with 60,000 chains), so
readiness is proven, not assumed: a scratch table is added and deleted until the monitor shows
it, and only then is "ready" printed on stderr.

The monitor never outlives this script (also when it is killed): a listener of the nftables
notifications anywhere on the machine, in any namespace, makes the kernel build a notification
per changed element for every commit in every namespace, which would slow each later
measurement of either proxy.
"""
import signal
import subprocess
import sys
import threading
import time

address, timeout = sys.argv[1], float(sys.argv[2])
probe = 'skein_bench_probe'
monitor = subprocess.Popen(['nft', 'monitor'],
                           stdout=subprocess.PIPE, text=True, bufsize=1)


def stop(*_):
    monitor.kill()
    sys.exit(1)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
timer = threading.Timer(timeout, monitor.kill)
timer.daemon = True
timer.start()


def poke():
    while not ready.is_set():
        subprocess.run(['nft', 'add table ip ' + probe], check=False)
        subprocess.run(['nft', 'delete table ip ' + probe], check=False)
        ready.wait(0.2)


ready = threading.Event()
threading.Thread(target=poke, daemon=True).start()
for line in monitor.stdout:
    if not ready.is_set():
        if probe in line:
            ready.set()
            time.sleep(0.3)  # the poker's last add/delete pair is done
            print('ready', file=sys.stderr, flush=True)
        continue
    if address in line:
        print(f'{time.time():.6f}', flush=True)
        break
monitor.kill()
