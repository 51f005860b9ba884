#!/usr/bin/env bash
# The test command: set up the environment (scripts/setup_env.sh, idempotent), then run the suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k refine`.
#
# With $COMFYUI_DIR set, or with this pack inside ComfyUI/custom_nodes/, the suite runs once against that ComfyUI.
# Otherwise it runs once per flavour that scripts/setup_env.sh installs, by default both (as CI does):
#   notcomfy        PyPI notcomfy 0.1.0 (ComfyUI core, late 2024)
#   comfyui-0.3.75  the full ComfyUI 0.3.75 tree (Dec 2025), server, workflows and integration tests included
# and ends with one summary line per flavour. CORE2_FLAVOURS picks some, e.g.
# `CORE2_FLAVOURS=notcomfy bash scripts/test.sh -q -k refine` for a quick focused run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ -n "${COMFYUI_DIR:-}" ] || { [ "$(basename "$(dirname "$root")")" = "custom_nodes" ] && [ -f "$root/../../comfy/samplers.py" ]; }; then
  python="$(bash scripts/setup_env.sh)"
  bash scripts/install_browser.sh || true  # best effort: Chromium + playwright-core for tests/test_browser.py
  exec "$python" -m pytest "$@"
fi

flavours="${CORE2_FLAVOURS:-notcomfy comfyui-0.3.75}"
logdir="$(mktemp -d)"
trap 'rm -rf "$logdir"' EXIT
summary=()
worst=0
for flavour in $flavours; do
  echo "=== flavour $flavour ==="
  start=$SECONDS
  rc=0
  python="$(CORE2_COMFY="$flavour" bash scripts/setup_env.sh)" || rc=$?
  # the full ComfyUI runs the browser test where Chromium and playwright-core can be had (best effort, never fails)
  [ "$rc" = 0 ] && [ "$flavour" != notcomfy ] && { bash scripts/install_browser.sh || true; }
  if [ "$rc" = 0 ]; then
    set +e
    CORE2_COMFY="$flavour" "$python" -m pytest "$@" 2>&1 | tee "$logdir/$flavour.log"
    rc="${PIPESTATUS[0]}"
    set -e
    # pytest's closing line, e.g. "182 passed, 3 skipped in 1074.52s (0:17:54)", without its ==== frame
    line="$(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran' "$logdir/$flavour.log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')"
  else
    line="environment setup failed"
  fi
  summary+=("flavour $flavour: ${line:-no summary} (exit $rc, $((SECONDS - start)) s)")
  [ "$rc" -gt "$worst" ] && worst="$rc"
done
echo "=== summary ==="
printf '%s\n' "${summary[@]}"
exit "$worst"
