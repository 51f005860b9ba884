"""The pack inside a full ComfyUI (run when COMFYUI_DIR points at a checkout)."""
import asyncio
import subprocess
import sys

import pytest

from conftest import COMFY, ROOT


@pytest.mark.full_comfy
def test_comfyui_loads_pack_and_registers_nodes():
    import nodes

    ok = asyncio.run(nodes.load_custom_node(str(ROOT))) if asyncio.iscoroutinefunction(nodes.load_custom_node) \
        else nodes.load_custom_node(str(ROOT))
    assert ok is not False
    for node_id in ("CoRe2KSampler", "CoRe2KSamplerAdvanced", "CoRe2Guider", "CoRe2Apply", "CoRe2Compare",
                    "CoRe2GridImage", "CoRe2OfficialPreset"):
        assert node_id in nodes.NODE_CLASS_MAPPINGS
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("CoRe²")


@pytest.mark.full_comfy
def test_pyproject_parses_with_comfy_config():
    from comfy_config import config_parser

    cfg = config_parser.extract_node_configuration(str(ROOT))
    assert cfg is not None
    assert cfg.tool_comfy.publisher_id and cfg.tool_comfy.display_name


@pytest.mark.full_comfy
def test_main_quick_test_for_ci_imports_pack(tmp_path):
    """`python main.py --cpu --quick-test-for-ci` with this pack in custom_nodes/ imports it without error."""
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    (custom / "comfyui-core2").symlink_to(ROOT, target_is_directory=True)
    r = subprocess.run([sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--base-directory", str(tmp_path),
                        "--disable-auto-launch"], cwd=COMFY.path, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    lines = [l for l in log.splitlines() if "comfyui-core2" in l]
    assert lines, log[-3000:]
    assert not any("IMPORT FAILED" in l for l in lines), "\n".join(lines)
