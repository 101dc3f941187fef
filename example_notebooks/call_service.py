"""Call a deployed model from Python: ``python call_service.py [NAME] [N]``.

Finds the deployment's address in nbdeploy's state, sends N single-row requests (the same
body as the curl example nbdeploy prints) and reports the answers and the latency.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.request

import nbdeploy


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "predict"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    [deployment] = nbdeploy.status(name)
    if deployment.status != "serving":
        sys.exit(f"{name} is {deployment.status}; deploy it first")
    url = f"{deployment.url}/predict"
    latencies, answers = [], []
    for index in range(count):
        row = [((index * 7 + feature * 3) % 11) / 5 - 1 for feature in range(20)]
        request = urllib.request.Request(
            url,
            data=json.dumps({"rows": [row]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as answer:
            answers.append(json.loads(answer.read())[0])
        latencies.append((time.perf_counter() - started) * 1000)
    print(f"{count} requests to {url}: answers {answers}")
    print(f"latency ms: p50 {statistics.median(latencies):.1f}, max {max(latencies):.1f}")


if __name__ == "__main__":
    main()
