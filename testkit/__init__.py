"""Helpers shared by the tests, the benchmarks (bench/) and the tools (tools/): an importable package, so that
`from testkit import tiny_models` works wherever the repository root is importable (no sys.path entries for tests/).

* tiny_models      tiny SD1.5 / SDXL / SD3 / FLUX-structured ComfyUI models with random weights
* collect_helpers  a minimal trajectory recorder for tests (independent of the Collect nodes on purpose)
* comfy_server     a real ComfyUI server for tests (full ComfyUI only) and the UI → API workflow conversion
* builtin_nodes    run a ComfyUI built-in node (V1 or V3) and get its outputs as a tuple

They import ComfyUI and the pack (as `comfyui_core2`) lazily: activate ComfyUI (tools/comfy_env.py) and load the pack
first, as tests/conftest.py does.
"""
