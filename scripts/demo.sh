#!/usr/bin/env bash
# The one-command CoRe² demo: builds the environment once (scripts/setup_env.sh), then runs Collect → Reflect →
# Refine on the toy text-to-image world on the CPU (a few minutes) and writes a picture grid and a report to
# demo_out/ (or the folder given with --out). Extra arguments go to `python -m demo.run` (--quick, --out DIR, ...).
# A rerun reuses the collected dataset and the trained weak model.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$(bash scripts/setup_env.sh)"
# The toy model is latency-bound: one torch thread is fastest (more threads are slower on small CPUs).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec nice -n "${CORE2_DEMO_NICE:-5}" "$py" -m demo.run "$@"
