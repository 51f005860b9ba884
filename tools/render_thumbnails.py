"""Render the .jpg thumbnails of the toy example workflows (and docs/icon.png, the registry icon) with the toy model (no downloads, a few seconds on a CPU).

    python -m tools.render_thumbnails

workflows/08_toy_collect_reflect_refine.jpg: four prompts sampled with CFG (cfg 5, 10 euler steps), the pictures the
toy chain makes; workflows/09_toy_cfg_vs_core2.jpg: top row CFG, bottom row the same seeds with CoRe² guidance
(w2s_scale 1.5 on every step, an exact weak-to-strong sharpening of CFG without a trained weak model: weak = cond,
i.e. out = cond + 1.5·(cfg − cond): the CoRe² slow-step rule with the cfg=1 weak model). Running the workflows in
ComfyUI shows the real results; these are only thumbnails.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS = ["a red triangle at the top", "a blue circle at the left", "a yellow square at the bottom",
           "a green cross at the right"]
SCALE = 4  # 32 px pictures -> 128 px tiles


def _grid(rows, scale=SCALE):
    import numpy as np
    from PIL import Image

    tiles = [np.concatenate([(im.clamp(0, 1).numpy() * 255).round().astype("uint8") for im in row], axis=1) for row in rows]
    arr = np.concatenate(tiles, axis=0)
    img = Image.fromarray(arr)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def main() -> int:
    from tools import comfy_env

    comfy_env.activate()
    from toy import world

    cfg = world.generate(PROMPTS, cfg=5.0, steps=10, seed=0)
    model = world.load_toy_model()

    def w2s(args):  # weak = cond; slow-step rule out = weak + w·(cfg − weak)
        c = args["cond_denoised"]
        return c + 1.5 * (args["denoised"] - c)

    model.set_model_sampler_post_cfg_function(w2s)
    sharp = world.generate(PROMPTS, cfg=5.0, steps=10, seed=0, model=model)
    out = ROOT / "workflows"
    _grid([list(cfg)]).save(out / "08_toy_collect_reflect_refine.jpg", quality=88)
    _grid([list(cfg), list(sharp)]).save(out / "09_toy_cfg_vs_core2.jpg", quality=88)
    # the Comfy Registry icon ([tool.comfy] Icon in pyproject.toml): 4×4 toy pictures, 256 px square
    icon_prompts = [f"a {c} {s} at the centre" for c, s in zip(["red", "green", "blue", "yellow", "magenta", "cyan", "red",
                                                                "blue"] * 2, ["circle", "square", "triangle", "cross"] * 4)]
    icons = world.generate(icon_prompts, cfg=5.0, steps=10, seed=1, model=model)
    (ROOT / "docs").mkdir(exist_ok=True)
    _grid([list(icons[i:i + 4]) for i in range(0, 16, 4)], scale=2).save(ROOT / "docs" / "icon.png")
    print("thumbnails written to", out, "and the registry icon to docs/icon.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
