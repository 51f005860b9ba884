"""The toy world: procedural data, the shipped toy text-to-image model as a real ComfyUI model, its classifier,
CFG mattering, and the loader nodes."""
from __future__ import annotations

import pytest
import torch

from comfyui_core2.toy import classifier, data, evaluate, pixels, text, world
from comfyui_core2.nodes import model_info
from comfyui_core2.nodes import toy as toy_nodes


@pytest.fixture(scope="module")
def toy():
    return world.load()


def test_procedural_data_is_deterministic_and_labelled():
    a, b, c = data.dataset(16, seed=3), data.dataset(16, seed=3), data.dataset(16, seed=4)
    assert torch.equal(a.images, b.images) and a.prompts == b.prompts
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (16, 3, 32, 32) and 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    for prompt, label in zip(a.prompts, a.labels.tolist()):
        assert data.parse_prompt(prompt).label == tuple(label)
    assert data.parse_prompt("a green cross in the center").position == "centre"
    assert data.parse_prompt("a green cross") is None  # no position named
    # a shape is where its label says: the brightest-differing half of the picture follows the position
    img = data.render(torch.tensor([[0, 0, 0], [0, 0, 1]]), torch.Generator().manual_seed(0))
    fg = (img - img[:, :, :1, :1]).abs().sum(1)  # distance from the background colour
    assert fg[0, :16].sum() > fg[0, 16:].sum() and fg[1, 16:].sum() > fg[1, :16].sum()  # top vs bottom


def test_tokenizer_and_text_encoder_shapes(toy):
    ids = text.tokenize("A red Triangle at the top!")
    assert ids.shape == (text.MAX_TOKENS,) and ids[6:].eq(0).all() and ids[:6].ne(0).all()
    cond = world.encode("a red triangle at the top")
    tokens, extras = cond[0]
    assert tokens.shape == (1, text.MAX_TOKENS, text.WIDTH) and extras["pooled_output"].shape == (1, text.WIDTH)
    assert torch.equal(tokens, world.encode("a red triangle at the top")[0][0])  # deterministic
    assert not torch.allclose(tokens, world.encode("a blue triangle at the top")[0][0])
    assert world.encode(["a red circle on the left", ""])[0][0].shape[0] == 2


def test_latent_round_trip_and_decode_shapes():
    pics = data.dataset(3, seed=0).images
    lat = pixels.to_latent(pics)
    assert lat.shape == (3, 12, 16, 16)
    image = world.decode({"samples": lat})
    assert image.shape == (3, 32, 32, 3)
    assert torch.allclose(image.movedim(-1, 1), pics, atol=1e-6)
    assert torch.allclose(world.encode_image(image), lat, atol=1e-6)
    with pytest.raises(ValueError, match="toy-world latent"):
        world.decode(torch.zeros(1, 4, 16, 16))


def test_shipped_weights_load_into_comfy_model(toy):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    assert world.DEFAULT_WEIGHTS.stat().st_size <= 20e6
    p = world.load_toy_model()
    assert isinstance(p, comfy.model_patcher.ModelPatcher) and isinstance(p.model, comfy.model_base.BaseModel)
    assert isinstance(p.model.diffusion_model, UNetModel)
    assert isinstance(p.model.model_sampling, comfy.model_sampling.ModelSamplingDiscrete)
    assert p.model.model_type == comfy.model_base.ModelType.V_PREDICTION and model_info.latent_channels(p) == 12
    assert model_info.family(p) == "toy"
    # trained, not freshly initialised: it denoises far better than an untrained (zero-output) v-model would
    pics = data.dataset(8, seed=5)
    x0 = pixels.to_latent(pics.images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    cond = world.encode(pics.prompts)[0][0]
    for s in (0.5, 2.0, 8.0):
        with torch.no_grad():
            den = p.model.apply_model(x0 + s * noise, torch.full((8,), s), c_crossattn=cond)
        untrained = float(torch.nn.functional.mse_loss((x0 + s * noise) / (s * s + 1), x0))
        assert float(torch.nn.functional.mse_loss(den, x0)) < 0.25 * untrained, s


def test_bad_model_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "not_toy.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not a CoRe² toy-world model"):
        world.load(bad)
    with pytest.raises(FileNotFoundError, match="train_toy"):
        world.load(tmp_path / "missing.safetensors")
    with pytest.raises((ValueError, FileNotFoundError)):
        toy_nodes.model_path("toy/../../etc/passwd")


def test_classifier_reads_procedural_pictures():
    test = data.dataset(240, seed=2024)
    acc = classifier.accuracy(classifier.load().predict(test.images), test.labels)
    assert min(acc.shape, acc.colour, acc.position) > 0.9, acc
    # and IMAGE layout [B, H, W, 3] gives the same answers
    assert torch.equal(classifier.load().predict(test.images[:8].movedim(1, -1)), classifier.load().predict(test.images[:8]))


def test_sampling_works_and_cfg_raises_prompt_accuracy(toy):
    n, steps = 24, 10
    prompts, labels = evaluate.prompt_set(n, seed=1)
    at1 = world.generate(prompts, cfg=1.0, steps=steps, seed=7)
    at5 = world.generate(prompts, cfg=5.0, steps=steps, seed=7)
    assert at1.shape == at5.shape == (n, 32, 32, 3) and torch.isfinite(at5).all()
    assert not torch.allclose(at1, at5)
    acc1, acc5 = evaluate.score(at1, labels), evaluate.score(at5, labels)
    # the toy model was trained on imperfect captions: at cfg 1 it follows the prompt only partly, CFG sharpens it
    assert acc5.mean > 0.85 and min(acc5.shape, acc5.colour, acc5.position) > 0.8, acc5
    assert acc5.mean >= acc1.mean + 0.15, (acc1, acc5)


def _run_nodes(latent_node_output, batch):
    import comfy.sample

    model, toy_text = toy_nodes.CoRe2ToyModelLoader().load(toy_nodes.SHIPPED)
    pos = toy_nodes.CoRe2ToyTextEncode().encode(toy_text, "a yellow square on the left")[0]
    neg = toy_nodes.CoRe2ToyTextEncode().encode(toy_text, "")[0]
    latent = latent_node_output["samples"]
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, 3)
    out = comfy.sample.sample(model, noise, 12, 5.0, "euler", "normal", pos, neg, latent, disable_pbar=True, seed=3)
    images = toy_nodes.CoRe2ToyDecode().decode({"samples": out})[0]
    assert images.shape == (batch, 32, 32, 3)
    return images


def test_nodes_make_pictures_that_follow_the_prompt():
    assert toy_nodes.SHIPPED in toy_nodes.CoRe2ToyModelLoader.INPUT_TYPES()["required"]["toy_model"][0]
    for cls in toy_nodes.NODE_CLASS_MAPPINGS.values():
        assert cls.CATEGORY == "CoRe²/toy" and cls.DESCRIPTION
    latent = toy_nodes.CoRe2ToyEmptyLatent().generate(4)[0]
    assert latent["samples"].shape == (4, 12, 16, 16)
    images = _run_nodes(latent, 4)
    pred = classifier.load().predict(images)
    want = torch.tensor(data.Attributes("square", "yellow", "left").label)
    assert (pred[:, 1:] == want[1:]).all(dim=1).float().mean() >= 0.75, pred  # colour and place (shape is weakest)
    prompts = toy_nodes.CoRe2ToyPromptList().list(120, 0)[0].splitlines()
    assert len(set(prompts)) == 120 and all(data.parse_prompt(p) for p in prompts)


@pytest.mark.full_comfy
def test_comfy_empty_latent_image_and_ksampler_work():
    import nodes as comfy_nodes

    model, toy_text = toy_nodes.CoRe2ToyModelLoader().load(toy_nodes.SHIPPED)
    pos = toy_nodes.CoRe2ToyTextEncode().encode(toy_text, "a cyan circle at the bottom")[0]
    neg = toy_nodes.CoRe2ToyTextEncode().encode(toy_text, "")[0]
    latent = comfy_nodes.EmptyLatentImage().generate(128, 128, 2)[0]
    out = comfy_nodes.KSampler().sample(model, 1, 12, 5.0, "euler", "normal", pos, neg, latent)[0]
    images = toy_nodes.CoRe2ToyDecode().decode(out)[0]
    assert images.shape == (2, 32, 32, 3)
    assert classifier.load().predict(images)[:, 1].eq(data.COLOUR_NAMES.index("cyan")).any()
