"""The client against a faulty server: 500 requests to `sim_core.py --fail-rate 0.3` (429 with Retry-After, 500, 529,
cut connections), default retries. Prints one JSON line: entries back, Completions, CoreErrors, retries, seconds.

    python benchmarks/client_faults.py [--n 500] [--fail-rate 0.3] [--seed 0]
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import mathsim  # noqa: E402
from core_client import CoreClient  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--fail-rate", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "sim_core.py"), "--port", "0",
                               "--fail-rate", str(args.fail_rate)], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"listening on (\S+)", server.stdout.readline()).group(1)
        client = CoreClient(url + "/v1", "sim-core", progress=False)
        problems = [t.problem for t in mathsim.generate_tasks(args.n, seed=args.seed, split="test")]
        start = time.time()
        out = client.chat_many([mathsim.core_messages(problem, None) for problem in problems])
        kinds = collections.Counter(type(r).__name__ for r in out)
        print(json.dumps(dict(n=args.n, fail_rate=args.fail_rate, seed=args.seed, entries=len(out),
                              completions=kinds["Completion"], core_errors=kinds["CoreError"],
                              retries=client.stats()["retries"], seconds=round(time.time() - start, 1))))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
