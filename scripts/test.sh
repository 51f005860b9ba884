#!/usr/bin/env bash
# The test command: set up the environment (scripts/setup_env.sh, idempotent), then run the suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k refine`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$root/scripts/setup_env.sh")"
cd "$root"
exec "$python" -m pytest "$@"
