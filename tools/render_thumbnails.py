"""Render the .jpg thumbnails of the toy example workflows and docs/icon.png (the registry icon) with the toy model.

    COMFYUI_DIR=/path/to/ComfyUI python -m tools.render_thumbnails    # the real thing (about 9 minutes on a 2-core CPU: 08 and 10 at their full recipes)
    python -m tools.render_thumbnails                                  # approximation without a full ComfyUI

With a full ComfyUI the thumbnails are the workflows' own outputs: a ComfyUI server (loopback, CPU, temporary base
directory) runs 08 Toy world (Collect, Reflect, Refine) and then 09 Toy world (CFG vs CoRe2) through its HTTP API, and the pictures
of their final PreviewImage nodes are used (08: the four CoRe² KSampler pictures, tiled; 09: its labelled grid from
CoRe² Grid Image, top row CFG, bottom row CoRe² from the same seed), then 10 Toy scenes (about 5 more minutes: its rows
CFG at 20 steps, CoRe² at 24 passes and CFG at 12 steps, labelled). Without one (notcomfy), 08 shows CFG samples, and
09's and 10's bottom rows use the weak-to-strong rule with weak = cond (out = cond + 1.5·(cfg − cond)) instead of a
trained weak model (09 drawn as a labelled grid, core2/grid.py).
The workflows that need downloaded models (01-07) get title cards (make_workflows.CARDS): the title, the CoRe² stages
they run and the files they need; `--cards` draws only those (no ComfyUI needed).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS = ["a red triangle at the top", "a blue circle at the left", "a yellow square at the bottom",
           "a green cross at the right"]
TILE = 128  # pictures are enlarged (nearest neighbour, integer factor) to tiles of about this size


def _grid(rows, tile=TILE):
    import numpy as np
    from PIL import Image

    scale = max(1, tile // rows[0][0].shape[0])
    tiles = [np.concatenate([(im.clamp(0, 1).numpy() * 255).round().astype("uint8") for im in row], axis=1) for row in rows]
    arr = np.concatenate(tiles, axis=0)
    img = Image.fromarray(arr)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def _labelled(rows, labels):
    """Rows of [H, W, 3] pictures as a grid with a label on each row (core2/grid.py, as CoRe² Grid Image draws)."""
    import torch

    from core2 import grid

    return grid.draw(torch.stack([im for row in rows for im in row]).numpy(), grid.GridSpec(labels, len(rows[0])))


def _final_preview_images(server, name: str, count: int = 1, titles=None):
    """Run a workflow through the server; the pictures of its last `count` PreviewImage nodes (in execution order),
    or of the PreviewImage nodes with these titles (in this order), as [H, W, 3] tensors."""
    import io
    import json

    import numpy as np
    import torch
    from PIL import Image

    from testkit import comfy_server

    wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    hist = server.run_prompt(comfy_server.ui_to_api(wf, server.get("/object_info", timeout=120)), timeout=3600)
    print(f"{name}: ran in {time.perf_counter() - t0:.0f} s", flush=True)  # 08 at its full budget: minutes on a CPU
    for node_id, out in hist.get("outputs", {}).items():  # what the nodes said (Reflect's verdict, passes, seconds)
        for text in out.get("text", []):
            print(f"  node {node_id}: {' '.join(str(text).split())[:400]}", flush=True)
    nodes = [n for n in wf["nodes"] if n["type"] == "PreviewImage"]
    if titles is None:
        previews = sorted(nodes, key=lambda n: n["order"])[-count:]
    else:
        previews = [next(n for n in nodes if n.get("title") == t) for t in titles]
    ims = []
    for node in previews:
        for im in hist["outputs"][str(node["id"])]["images"]:
            data = server.get_bytes(f"/view?filename={im['filename']}&subfolder={im['subfolder']}&type={im['type']}")
            ims.append(torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255))
    return ims


def _from_server(comfy_path: Path, out: Path) -> None:
    import tempfile

    from testkit import comfy_server

    with tempfile.TemporaryDirectory() as base:
        server = comfy_server.Server(comfy_path, ROOT, Path(base))
        try:
            server.wait()
            chain = _final_preview_images(server, "08 Toy world (Collect, Reflect, Refine)")
            (grid,) = _final_preview_images(server, "09 Toy world (CFG vs CoRe2)")  # one labelled grid: CFG, then CoRe²
            scenes_from_server(server, out)
        finally:
            server.stop()
    _grid([chain]).save(out / "08 Toy world (Collect, Reflect, Refine).jpg", quality=88)
    _grid([[grid]], tile=1).save(out / "09 Toy world (CFG vs CoRe2).jpg", quality=88)


SCENES_WORKFLOW = "10 Toy scenes (Collect, Reflect, Refine)"
SCENES_ROWS = ("CFG, 20 steps", "CoRe², 4 slow + 16 fast", "CFG, 12 steps (CoRe²'s passes)")  # its preview titles


def scenes_from_server(server, out: Path) -> None:
    """Workflow 10 through the server at its full recipe (about 5 minutes on a 2-core CPU); its thumbnail is its own
    three preview rows, labelled: CFG at 20 steps, CoRe² (24 passes), CFG at 12 steps (24 passes)."""
    ims = _final_preview_images(server, SCENES_WORKFLOW, titles=SCENES_ROWS)
    rows = [ims[i:i + 4] for i in range(0, len(ims), 4)]
    small = [[im[::4, ::4] for im in row] for row in rows]  # the previews are 4× enlarged; the grid enlarges again
    _labelled(small, list(SCENES_ROWS)).save(out / f"{SCENES_WORKFLOW}.jpg", quality=88)


SCENE_PROMPTS = ["a small red triangle left of a big blue circle", "a big green square above a small yellow cross",
                 "a big magenta circle right of a small cyan square", "a small blue cross below a big red triangle"]


def _scenes_thumbnail(out: Path, w2s) -> None:
    from toy import world

    path = world.spec("scenes").weights
    model = world.load_toy_model(path)
    model.set_model_sampler_post_cfg_function(w2s)
    kw = dict(cfg=5.0, steps=20, seed=0, path=path, scheduler="simple")
    cfg = world.generate(SCENE_PROMPTS, **kw)
    sharp = world.generate(SCENE_PROMPTS, model=model, **kw)
    _grid([list(cfg), list(sharp)]).save(out / "10 Toy scenes (Collect, Reflect, Refine).jpg", quality=88)


def title_card(name: str, size=(512, 384)):
    """A picture for a workflow that cannot be rendered here: its title, the Collect → Reflect → Refine chain with
    its own stages lit, a subtitle and the model files it loads."""
    import json

    from PIL import Image, ImageDraw

    from core2.pictext import draw_text
    from tools.make_workflows import CARDS, MODEL_FILES

    title, stages, sub = CARDS[name]
    wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    files = sorted({m["name"] for n in wf["nodes"] for m in n.get("properties", {}).get("models", [])})
    img = Image.new("RGB", size, (32, 36, 48))
    d = ImageDraw.Draw(img)
    draw_text(d, (24, 22), f"CoRe²  {name[:2]}", (150, 160, 190), 22)
    draw_text(d, (24, 62), title, (255, 255, 255), 30)
    draw_text(d, (24, 110), sub, (200, 205, 220), 20)
    x = 24
    for stage in ("Collect", "Reflect", "Refine"):
        lit = stage in stages
        d.rounded_rectangle([x, 170, x + 140, 226], 10, fill=(70, 130, 220) if lit else (55, 60, 75))
        draw_text(d, (x + 22, 184), stage, (255, 255, 255) if lit else (140, 145, 160), 22)
        x += 156
    for k, f in enumerate([f for f in files if f in MODEL_FILES][:4]):
        draw_text(d, (24, 256 + 26 * k), f"needs {MODEL_FILES[f][1]}/{f}", (170, 200, 170), 17)
    return img


def title_cards(out: Path) -> None:
    from tools.make_workflows import CARDS

    for name in CARDS:
        title_card(name).save(out / f"{name}.jpg", quality=88)


def main() -> int:
    if "--cards" in sys.argv[1:]:
        title_cards(ROOT / "workflows")
        print("title cards written to", ROOT / "workflows")
        return 0
    from tools import comfy_env

    comfy = comfy_env.activate()
    from toy import world

    out = ROOT / "workflows"
    title_cards(out)
    model = world.load_toy_model()

    def w2s(args):  # weak = cond; slow-step rule out = weak + w·(cfg − weak)
        c = args["cond_denoised"]
        return c + 1.5 * (args["denoised"] - c)

    model.set_model_sampler_post_cfg_function(w2s)
    if comfy.full:
        _from_server(comfy.path, out)  # 08, 09 and 10: the workflows' own pictures
    else:
        cfg = world.generate(PROMPTS, cfg=5.0, steps=10, seed=0)
        sharp = world.generate(PROMPTS, cfg=5.0, steps=10, seed=0, model=model)
        _grid([list(cfg)]).save(out / "08 Toy world (Collect, Reflect, Refine).jpg", quality=88)
        _labelled([list(cfg), list(sharp)], ["CFG", "weak = cond, w2s 1.5"]).save(out / "09 Toy world (CFG vs CoRe2).jpg",
                                                                                  quality=88)
        _scenes_thumbnail(out, w2s)
    # the Comfy Registry icon ([tool.comfy] Icon in pyproject.toml): 4×4 toy pictures, 256 px square
    icon_prompts = [f"a {c} {s} at the centre" for c, s in zip(["red", "green", "blue", "yellow", "magenta", "cyan", "red",
                                                                "blue"] * 2, ["circle", "square", "triangle", "cross"] * 4)]
    icons = world.generate(icon_prompts, cfg=5.0, steps=10, seed=1, model=model)
    (ROOT / "docs").mkdir(exist_ok=True)
    _grid([list(icons[i:i + 4]) for i in range(0, 16, 4)], tile=64).save(ROOT / "docs" / "icon.png")
    print("thumbnails written to", out, "and the registry icon to docs/icon.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
