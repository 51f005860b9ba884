#!/usr/bin/env bash
# Best effort: what tests/test_browser.py needs (ComfyUI's own frontend in headless Chromium), so that CI runs the
# browser test wherever the machine can install it. Never fails: offline, without apt or npm, or without root, it
# says what is missing and exits 0 (the browser test then skips, naming this script).
#
#   Chromium         an existing chromium / chromium-browser / google-chrome, else `apt-get install chromium`
#                    (Debian's package; as root or with password-less sudo)
#   playwright-core  `npm install playwright-core` into $CORE2_BROWSER_CACHE (default ~/.cache/comfyui-core2-browser),
#                    where the test looks for it; the driver only, never `npx playwright install` (it uses the
#                    Chromium above)
#
# CORE2_NO_BROWSER=1 skips all of it; CORE2_BROWSER_TIMEOUT (seconds, default 300) bounds each install step.
set -uo pipefail
say() { echo "[install_browser] $*" >&2; }
[ "${CORE2_NO_BROWSER:-}" = 1 ] && { say "CORE2_NO_BROWSER=1: skipped"; exit 0; }
limit="${CORE2_BROWSER_TIMEOUT:-300}"
cache="${CORE2_BROWSER_CACHE:-$HOME/.cache/comfyui-core2-browser}"

have_chromium() {
  [ -n "${CHROMIUM:-}" ] && [ -x "$CHROMIUM" ] && return 0
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 1
  fi
}

install_chromium() {
  have_chromium && return 0
  command -v apt-get >/dev/null || { say "no Chromium and no apt-get: install Chromium to run the browser test"; return 0; }
  say "installing Chromium with apt-get (at most ${limit} s per step)"
  if ! as_root env DEBIAN_FRONTEND=noninteractive timeout "$limit" apt-get install -y -q chromium >/dev/null 2>&1; then
    # a fresh machine may need the package lists first
    as_root timeout "$limit" apt-get update -q >/dev/null 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive timeout "$limit" apt-get install -y -q chromium >/dev/null 2>&1 \
      || say "could not install Chromium (offline, no root, or no package): the browser test will skip"
  fi
}

install_playwright() {
  [ -f "$cache/node_modules/playwright-core/package.json" ] && return 0
  command -v npm >/dev/null || { say "no npm: install Node.js and npm to run the browser test"; return 0; }
  say "installing playwright-core into $cache (at most ${limit} s)"
  mkdir -p "$cache" && timeout "$limit" npm install --prefix "$cache" --no-audit --no-fund --silent \
    --fetch-retries=1 --fetch-timeout=30000 playwright-core >/dev/null 2>&1 \
    || say "could not install playwright-core (offline?): the browser test will skip"
}

# an attempt that failed in the last 12 hours is not repeated on every test run (offline machines)
stamp="$cache/.last-failed-attempt"
if [ -f "$stamp" ] && [ -n "$(find "$stamp" -mmin -720 2>/dev/null)" ]; then
  say "the last install attempt failed less than 12 h ago ($stamp): not retried"
  exit 0
fi
install_chromium
install_playwright
mkdir -p "$cache"
if have_chromium && [ -f "$cache/node_modules/playwright-core/package.json" ]; then rm -f "$stamp"; else touch "$stamp"; fi
exit 0
