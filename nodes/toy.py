"""Toy world nodes: tiny text-to-image models that run on any CPU, to try CoRe² without real weights.

Two worlds. "shapes": 32×32 pictures of one coloured shape at a place ("a red triangle at the top"), a UNet
(v-prediction as SD2.x). "scenes": 64×64 pictures of two objects in a relation ("a small red triangle left of a big
blue circle"), a flow-matching MMDiT (SD3-style). Both are real ComfyUI models: ComfyUI's KSampler, the CoRe²
samplers and Collect work on them as on SD.
"""
from __future__ import annotations

from pathlib import Path

from ..core2.files import safe_child
from ..toy import world
from . import paths
from .inputs import FIXED_SEED

CATEGORY = "CoRe²/toy"
TOY_TEXT = "CORE2_TOY_TEXT"
SHIPPED = "toy_t2i.safetensors"
SHIPPED_FILES = {SHIPPED: world.DEFAULT_WEIGHTS, world.WORLDS["scenes"].weights.name: world.WORLDS["scenes"].weights}
_USER_SUBDIR = "toy"  # retrained toy models: models/core2/toy/*.safetensors


def _user_dirs() -> list[Path]:
    return [d / _USER_SUBDIR for d in paths.weak_model_dirs()]


def model_files() -> list[str]:
    names = [n for n, p in SHIPPED_FILES.items() if p.is_file()] or [SHIPPED]
    for d in _user_dirs():
        if d.is_dir():
            names += sorted(f"{_USER_SUBDIR}/{p.name}" for p in d.glob("*.safetensors") if p.is_file())
    return list(dict.fromkeys(names))


def model_path(name: str) -> Path:
    if name in SHIPPED_FILES:
        return SHIPPED_FILES[name]
    prefix = _USER_SUBDIR + "/"
    if name.startswith(prefix):
        for d in _user_dirs():
            p = safe_child(d, name[len(prefix):], "toy model file name")
            if p.is_file():
                return p
    raise FileNotFoundError(f"CoRe² toy: no toy model named {name!r}. Choose {SHIPPED} (shipped with the pack) or put "
                            f"a file made by `python -m toy.train_toy` into models/core2/{_USER_SUBDIR}/.")


class CoRe2ToyModelLoader:
    DESCRIPTION = ("Loads a CoRe² toy world: a tiny text-to-image model and its text encoder. toy_t2i: 32×32 pictures "
                   "of one coloured shape at a place (a UNet). scenes_t2i: 64×64 pictures of two objects in a relation "
                   "(a flow-matching MMDiT, like SD3). Runs on a CPU; use it to try Collect, Reflect and the CoRe² "
                   "samplers without downloading a real checkpoint.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", TOY_TEXT)
    RETURN_NAMES = ("model", "toy_text")
    OUTPUT_TOOLTIPS = ("The toy diffusion model (shapes: v-prediction like SD2.x; scenes: flow like SD3): plug it into "
                       "KSampler or a CoRe² sampler.",
                       "The toy text encoder: plug it into CoRe² Toy Text Encode.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"toy_model": (model_files(), {"default": SHIPPED, "tooltip":
                             f"{' and '.join(SHIPPED_FILES)} ship with the pack; retrained ones go in "
                             f"models/core2/{_USER_SUBDIR}/."})}}

    def load(self, toy_model):
        w = world.load(model_path(toy_model))
        return (w.patcher.clone(), w)


class CoRe2ToyTextEncode:
    DESCRIPTION = ("Turns a toy-world prompt into CONDITIONING. Both worlds know shapes (circle, square, triangle, "
                   "cross) and colours (red, green, blue, yellow, magenta, cyan). shapes adds places (top, bottom, "
                   "left, right, centre): \"a red triangle at the top\"; scenes adds sizes (small, big) and relations "
                   "(left of, right of, above, below): \"a small red triangle left of a big blue circle\". Leave it "
                   "empty for the negative prompt.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Token embeddings [1, 16, 64] and a pooled vector [1, 64], like a CLIP text encoder's.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "toy_text": (TOY_TEXT, {"tooltip": "From CoRe² Toy Model Loader."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "a red triangle at the top",
                                "tooltip": "Words outside the toy vocabulary are read as 'unknown'. Empty = no prompt "
                                           "(the unconditional prompt the model was trained with)."}),
        }}

    def encode(self, toy_text, text):
        return (world.conditioning(toy_text.text_encoder, text),)


class CoRe2ToyEmptyLatent:
    DESCRIPTION = ("An empty latent for a toy model: shapes, a 32×32 picture as a 12×16×16 latent (2×2 pixel "
                   "patches); scenes, a 64×64 picture as a 48×16×16 latent (4×4 patches). ComfyUI's Empty Latent Image "
                   "at 128×128 also works (KSampler widens its channels to the model's).")
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"batch_size": ("INT", {"default": 4, "min": 1, "max": 4096,
                                                    "tooltip": "How many pictures to make at once."}),
                             "world": (list(world.WORLDS), {"default": "shapes", "tooltip":
                                       "The world of the model you sample: shapes (toy_t2i) or scenes (scenes_t2i)."})}}

    def generate(self, batch_size, **kwargs):  # "world" would shadow the module
        return ({"samples": world.empty_latent(batch_size, kwargs.get("world", "shapes"))},)


class CoRe2ToyDecode:
    DESCRIPTION = ("Turns a toy-world latent into pictures (exact: the toy worlds have no VAE), enlarged by an integer "
                   "factor (nearest neighbour) so that they are visible on the canvas.")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT", {"tooltip": "A latent made by sampling a toy model."}),
                             "upscale": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip":
                                         "Enlarge each pixel to upscale × upscale (1 = the model's own 32×32 or "
                                         "64×64 pictures)."})}}

    def decode(self, samples, upscale=1):
        return (world.decode(samples, upscale),)


class CoRe2ToyPromptList:
    DESCRIPTION = ("Toy-world prompts, one per line, in a seeded order: a ready prompt list for collecting "
                   "trajectories or for a benchmark. shapes: every prompt (4 shapes × 6 colours × 5 places = 120, "
                   "repeating after that); scenes: distinct prompts from its 9216 two-object scenes.")
    CATEGORY = CATEGORY
    FUNCTION = "list"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompts",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "count": ("INT", {"default": 120, "min": 1, "max": 100000, "tooltip": "How many prompts."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, **FIXED_SEED, "tooltip":
                             "Order of the prompts (a new value gives a new list: keep it to resume a collection)."}),
            "world": (list(world.WORLDS), {"default": "shapes", "tooltip": "Whose prompts: shapes or scenes."}),
        }}

    def list(self, count, seed, **kwargs):
        from ..toy.judge import judge

        prompts = judge(kwargs.get("world", "shapes")).prompt_list(count, seed)
        return ("\n".join(prompts),)


NODE_CLASS_MAPPINGS = {
    "CoRe2ToyModelLoader": CoRe2ToyModelLoader,
    "CoRe2ToyTextEncode": CoRe2ToyTextEncode,
    "CoRe2ToyEmptyLatent": CoRe2ToyEmptyLatent,
    "CoRe2ToyDecode": CoRe2ToyDecode,
    "CoRe2ToyPromptList": CoRe2ToyPromptList,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CoRe2ToyModelLoader": "CoRe² Toy Model Loader",
    "CoRe2ToyTextEncode": "CoRe² Toy Text Encode",
    "CoRe2ToyEmptyLatent": "CoRe² Toy Empty Latent",
    "CoRe2ToyDecode": "CoRe² Toy Decode",
    "CoRe2ToyPromptList": "CoRe² Toy Prompt List",
}
