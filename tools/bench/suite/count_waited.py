#!/usr/bin/env python3
"""Requests that waited out a stall, per contender, from a bench run's
per-request latency CSVs (bench --keep_latency_csv writes them to
<run>/logs/<scenario>-<point>-<contender>-<rep>.csv).

    python3 tools/bench/suite/count_waited.py bench/results/<run> [threshold_ms]

For each scenario/point/contender: the number of requests at or above the
threshold (default 20 ms: most of a 40 ms stall) per repetition, their
median, and the per-repetition p99 with its median. A count is steadier
than a p99 when only about 1% of requests meet a stall.
"""
import collections
import csv
import glob
import os
import re
import statistics
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    run = sys.argv[1]
    threshold_us = float(sys.argv[2]) * 1000 if len(sys.argv) > 2 else 20000
    pattern = re.compile(r"^(\w+)-((?:open|closed|wrk)-\w+)-(.+)-(\d+)\.csv$")
    res = collections.defaultdict(list)
    files = sorted(glob.glob(os.path.join(run, "logs", "*.csv")))
    for f in files:
        m = pattern.match(os.path.basename(f))
        if not m:
            continue
        scenario, point, contender, _ = m.groups()
        with open(f) as fh:
            lat = sorted(int(r["latency_us"]) for r in csv.DictReader(fh))
        if not lat:
            continue
        waited = sum(1 for x in lat if x >= threshold_us)
        res[(scenario, point, contender)].append((waited, lat[int(len(lat) * 0.99)] / 1000))
    if not res:
        sys.exit(f"no per-request CSVs under {run}/logs (run the bench with --keep_latency_csv)")
    for (scenario, point, contender), v in sorted(res.items()):
        w = sorted(x[0] for x in v)
        p = sorted(x[1] for x in v)
        print(f"{scenario} {point} {contender:45s} waited: median {statistics.median(w)} {w}"
              f"  p99 ms: median {statistics.median(p):.2f} {['%.1f' % x for x in p]}")


if __name__ == "__main__":
    main()
