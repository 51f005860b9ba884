"""ComfyUI's own frontend (headless Chromium) opens every example workflow with this pack loaded: no missing node
types, every widget value lands on the widget it is meant for, every link on the input it names, and the frontend
turns each graph into a prompt. Runs only with a full ComfyUI (COMFYUI_DIR), Chromium and playwright-core (npm);
screenshots go to $CORE2_SCREENSHOTS or <tmp>/core2_browser."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import COMFY, ROOT
from testkit import comfy_server

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")


def _playwright_node_path() -> str | None:
    """A NODE_PATH under which `require("playwright-core")` works (env NODE_PATH, ./node_modules, /tmp/pw, npm -g)."""
    if NODE is None:
        return None
    cands = [p for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p]
    cands += [str(ROOT / "node_modules"), "/tmp/pw/node_modules"]
    npm = shutil.which("npm")
    if npm:
        r = subprocess.run([npm, "root", "-g"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            cands.append(r.stdout.strip())
    for c in cands:
        if (Path(c) / "playwright-core" / "package.json").is_file():
            return c
    return None


NODE_PATH = _playwright_node_path()
pytestmark = [pytest.mark.full_comfy,
              pytest.mark.skipif(not (CHROMIUM and NODE_PATH), reason="needs Chromium and playwright-core (npm i playwright-core)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with comfy_server.Server.running(COMFY.path, ROOT, tmp_path_factory.mktemp("comfy_browser")) as srv:
        yield srv


def test_frontend_opens_every_workflow(server):
    shots = Path(os.environ.get("CORE2_SCREENSHOTS") or Path(tempfile.gettempdir()) / "core2_browser")
    env = {**os.environ, "NODE_PATH": NODE_PATH, "CHROMIUM": CHROMIUM}
    r = subprocess.run([NODE, str(ROOT / "tests" / "browser_check.js"), server.url, str(ROOT / "workflows"), str(shots)],
                       capture_output=True, text=True, env=env, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:] + "\n" + server.log()[-2000:]
    out = json.loads(r.stdout)
    names = sorted(p.name for p in (ROOT / "workflows").glob("*.json"))
    assert [x["name"] for x in out["results"]] == names
    for res in out["results"]:
        assert res["missing"] == [], f"{res['name']}: the frontend does not know {res['missing']}"
        assert res["widgetMismatches"] == [], f"{res['name']}: " + "\n".join(res["widgetMismatches"])
        assert res["linkMismatches"] == [], f"{res['name']}: " + "\n".join(res["linkMismatches"])
        assert not any("missing" in d.lower() for d in res["dialogs"]), (res["name"], res["dialogs"])
        assert res["apiNodes"] == res["graphNodes"] - 1, res  # every node but the Note becomes a prompt node
        assert (shots / res["name"].replace(".json", ".png")).is_file()
