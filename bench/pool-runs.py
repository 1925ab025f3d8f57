#!/usr/bin/env python3
"""Pools the rounds of several bench/http-stack.sh runs of the same build.

    bash bench/http-stack.sh 4 25 2> run1.log   # the per-round lines go to stderr
    bash bench/http-stack.sh 4 25 2> run2.log
    python3 bench/pool-runs.py run1.log run2.log

For each target: the median of the per-round ratios to bare axum with the same 95 % bootstrap
interval as http-stack.sh (resampling rounds, fixed seed), the share of rounds at or above
85 %, and the median server CPU per request. Only rounds that measured every target count.

With rounds from two runs or more, also a run-aware interval: each bootstrap sample picks
runs at random (with replacement), then rounds at random within each picked run. Runs
differ more than rounds of one run do (the machine's speed drifts between them), so rounds
pooled as if independent give too narrow an interval; this one counts that spread too.
"""
import random
import re
import statistics as s
import sys

rounds = []
runs = []
for path in sys.argv[1:]:
    by_round = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"round (\d+) (\S+): ([\d.]+) req/s, ([\d.]+)", line)
            if m:
                by_round.setdefault(int(m[1]), {})[m[2]] = (float(m[3]), float(m[4]))
    targets = set().union(*by_round.values()) if by_round else set()
    complete = [r for r in by_round.values() if set(r) == targets and "bare" in r]
    rounds += complete
    if complete:
        runs.append(complete)
if not rounds:
    sys.exit("no complete rounds in " + " ".join(sys.argv[1:]))
print(f"{len(rounds)} rounds")
print(f"bare: median CPU {s.median(r['bare'][1] for r in rounds):.2f} µs/request")
for t in sorted({t for r in rounds for t in r} - {"bare"}):
    ratios = [r[t][0] / r["bare"][0] for r in rounds if t in r]
    rng = random.Random(1)
    boot = sorted(s.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    share = sum(v >= 0.85 for v in ratios) / len(ratios)
    cpu = s.median(r[t][1] for r in rounds if t in r)
    line = (f"{t}: {s.median(ratios):.1%} ({boot[50]:.1%}–{boot[1949]:.1%}), "
            f"at or above 85 % in {share:.0%} of rounds, CPU {cpu:.2f} µs/request")
    of_t = [[r[t][0] / r["bare"][0] for r in run if t in r] for run in runs]
    of_t = [run for run in of_t if run]
    if len(of_t) > 1:
        rng = random.Random(1)
        boot = sorted(
            s.median([v for run in rng.choices(of_t, k=len(of_t)) for v in rng.choices(run, k=len(run))])
            for _ in range(2000)
        )
        medians = ", ".join(f"{s.median(run):.1%}" for run in of_t)
        line += f"; run-aware interval {boot[50]:.1%}–{boot[1949]:.1%} (run medians {medians})"
    print(line)
