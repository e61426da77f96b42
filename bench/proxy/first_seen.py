#!/usr/bin/env python3
"""Waits for an address to appear in the nftables ruleset of this network namespace.

  first_seen.py ADDRESS TIMEOUT_SECONDS

Follows `nft monitor` and prints the Unix time of the first line that names ADDRESS (the
endpoint a change put into the rules), or nothing after TIMEOUT_SECONDS. Run under `ip netns
exec`; prints "ready" on stderr once it follows.
"""
import subprocess
import sys
import threading
import time

address, timeout = sys.argv[1], float(sys.argv[2])
monitor = subprocess.Popen(['nft', 'monitor'], stdout=subprocess.PIPE, text=True, bufsize=1)
timer = threading.Timer(timeout, monitor.kill)
timer.daemon = True
timer.start()
time.sleep(0.2)
print('ready', file=sys.stderr, flush=True)
for line in monitor.stdout:
    if address in line:
        print(f'{time.time():.6f}', flush=True)
        break
monitor.kill()
sys.exit(0)
