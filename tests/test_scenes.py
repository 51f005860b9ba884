"""The scenes world (toy/scenes/): two objects in a relation, a flow-matching MMDiT from ComfyUI's own classes,
a reader that reads every attribute back, and the toy nodes' world choice."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from comfyui_core2.nodes import model_info
from comfyui_core2.nodes import toy as toy_nodes
from comfyui_core2.toy import pixels, world
from comfyui_core2.toy.judge import judge
from comfyui_core2.toy.scenes import data, evaluate, reader, text

SCENES = world.spec("scenes")


@pytest.fixture(scope="module")
def scenes():
    return world.load(SCENES.weights)


def test_prompts_parse_back_and_render_deterministically():
    a, b, c = data.dataset(12, seed=5), data.dataset(12, seed=5), data.dataset(12, seed=6)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.shape == (12, 3, 64, 64) and 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    for prompt, label in zip(a.prompts, a.labels.tolist()):
        assert data.parse_prompt(prompt).label == tuple(label)
    s = data.parse_prompt("A tiny red circle to the left of a large blue cross")
    assert (s.size1, s.colour1, s.shape1, s.relation, s.size2, s.colour2, s.shape2) == \
        ("small", "red", "circle", "left of", "big", "blue", "cross")
    assert data.parse_prompt("a red circle left of a blue cross") is None  # sizes missing


def test_a_relation_and_its_mirror_are_one_picture_label():
    left = data.parse_prompt("a small red circle left of a big blue cross").label
    right = data.parse_prompt("a big blue cross right of a small red circle").label
    above = data.parse_prompt("a small red circle above a big blue cross").label
    assert torch.equal(data.canonical(torch.tensor([left])), data.canonical(torch.tensor([right])))
    assert data.canonical(torch.tensor([above]))[0, 0] == 1  # vertical axis
    # the picture puts the first-named object where the relation says: red on the left for "left of"
    img = data.render(torch.tensor([left]), torch.Generator().manual_seed(0))[0]
    red = (img[0] > 0.6) & (img[1] < 0.3) & (img[2] < 0.3)
    cols = red.nonzero()[:, 1].float()
    assert len(cols) > 10 and cols.mean() < 32


def test_latent_round_trip_is_exact_for_both_worlds():
    pics = data.dataset(2, seed=0).images
    lat = pixels.to_latent(pics, SCENES.patch)
    assert lat.shape == (2, 48, 16, 16) == world.empty_latent(2, "scenes").shape
    image = world.decode({"samples": lat})
    assert image.shape == (2, 64, 64, 3) and torch.allclose(image.movedim(-1, 1), pics, atol=1e-6)
    assert torch.allclose(world.encode_image(image), lat, atol=1e-6)
    big = world.decode(lat, upscale=3)
    assert big.shape == (2, 192, 192, 3) and torch.equal(big[:, ::3, ::3], image)
    with pytest.raises(ValueError, match="12 \\(shapes\\), 48 \\(scenes\\)"):
        world.decode(torch.zeros(1, 16, 8, 8))


def test_reader_reads_every_attribute_of_rendered_scenes():
    test = data.dataset(400, seed=2468)
    acc = reader.accuracy(reader.load().predict(test.images), test.labels)
    assert min(acc[f] for f in data.PICTURE_FIELDS) >= 0.98, acc
    assert acc["all"] >= 0.9, acc
    # IMAGE layout [B, H, W, 3] reads the same
    assert torch.equal(reader.load().predict(test.images[:8].movedim(1, -1)), reader.load().predict(test.images[:8]))


def test_shipped_scenes_model_is_a_comfy_sd3_flow_model(scenes):
    import comfy.model_base
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    assert SCENES.weights.stat().st_size <= 30e6
    patcher = world.load_toy_model(SCENES.weights)
    assert isinstance(patcher.model, comfy.model_base.SD3) and isinstance(patcher.model.diffusion_model, MMDiT)
    assert model_info.family(patcher) == "sd3" and model_info.prediction(patcher) == "flow"
    assert model_info.latent_channels(patcher) == 48
    from comfyui_core2.toy.scenes import model as scenes_model

    assert scenes_model.SHIFT < 1 and patcher.model.model_sampling.shift == pytest.approx(scenes_model.SHIFT)
    assert patcher.model.model_sampling.sigma_max == pytest.approx(1.0)  # the schedule still starts at pure noise
    assert scenes.spec.name == "scenes" and scenes.text_encoder.vocab == text.VOCAB


def test_a_shapes_file_is_not_read_as_scenes(tmp_path):
    from safetensors.torch import save_file

    from comfyui_core2.toy.scenes import model as scenes_model

    with pytest.raises(ValueError, match="not a CoRe² scenes-world model"):
        scenes_model.check_metadata({"format": "core2-toy-t2i"}, "x.safetensors")
    bad = tmp_path / "odd.safetensors"
    save_file({"w": torch.zeros(1)}, str(bad), metadata={"format": "core2-toy-scenes", "vocab": "[]"})
    with pytest.raises(ValueError, match="another vocabulary, text encoder or MMDiT layout"):
        world.load(bad)


def test_cfg_makes_scenes_follow_their_prompts(scenes):
    """The shipped model, a few held-out pictures: guidance raises the reader's accuracy (the world's premise)."""
    n = 32
    prompts, labels = evaluate.prompt_set(n, seed=3)
    kw = dict(steps=12, seed=800_001, path=SCENES.weights, sampler_name="euler", scheduler="simple")
    at1 = world.generate(prompts, cfg=1.0, **kw)
    at5 = world.generate(prompts, cfg=5.0, **kw)
    assert at1.shape == at5.shape == (n, 64, 64, 3) and torch.isfinite(at5).all()
    acc1, acc5 = evaluate.score(at1, labels), evaluate.score(at5, labels)
    assert acc5["mean"] > acc1["mean"], (acc1, acc5)
    assert acc5["axis"] >= acc1["axis"] and acc5["colour_a"] + acc5["colour_b"] > acc1["colour_a"] + acc1["colour_b"]


def test_nodes_choose_the_world():
    assert world.spec("scenes").weights.name in toy_nodes.CoRe2ToyModelLoader.INPUT_TYPES()["required"]["toy_model"][0]
    assert toy_nodes.CoRe2ToyEmptyLatent().generate(3, world="scenes")[0]["samples"].shape == (3, 48, 16, 16)
    assert toy_nodes.CoRe2ToyEmptyLatent().generate(3)[0]["samples"].shape == (3, 12, 16, 16)  # old workflows
    prompts = toy_nodes.CoRe2ToyPromptList().list(400, 0, world="scenes")[0].splitlines()
    assert len(prompts) == len(set(prompts)) == 400 and all(data.parse_prompt(p) for p in prompts)  # no repeats
    assert toy_nodes.CoRe2ToyPromptList().list(400, 1, world="scenes")[0].splitlines() != prompts  # seeded order
    lat = world.empty_latent(2, "scenes")
    assert toy_nodes.CoRe2ToyDecode().decode({"samples": lat}, 4)[0].shape == (2, 256, 256, 3)
    assert toy_nodes.CoRe2ToyDecode.INPUT_TYPES()["required"]["upscale"][1]["default"] > 1  # visible on the canvas


def test_every_scene_has_one_index():
    labels = [tuple(data.label_of_index(i)) for i in range(data.N_SCENES)]
    assert data.N_SCENES == 9216 and len(set(labels)) == data.N_SCENES
    scenes = [data.Scene.from_label(lab) for lab in labels[::97]]
    assert all(data.parse_prompt(s.prompt) == s for s in scenes)
    with pytest.raises(ValueError, match="outside"):
        data.label_of_index(data.N_SCENES)


def test_judges_share_one_interface():
    for name in ("shapes", "scenes"):
        j = judge(name)
        prompts, labels = j.prompt_set(6, 0)
        assert len(set(j.prompt_list(100, 0))) == 100  # the collection list repeats no prompt
        real = j.real_pictures(labels, 1)
        acc = j.score(real, labels)
        assert {"mean", "all", "n", *j.fields} <= set(acc) and acc["n"] == 6
        assert j.features(real).shape[0] == 6 and j.features(real).dtype == torch.float64
        ok = j.correct(real, labels)  # per picture and field; the accuracy is read from it
        assert ok.shape == (6, len(j.fields)) and j.accuracy(ok) == acc
        wrong = j.score(real.flip(0), labels)  # the same pictures against other prompts
        assert wrong["mean"] < acc["mean"] and wrong["all"] <= acc["all"]
    with pytest.raises(ValueError, match="no toy world"):
        judge("nope")


def test_training_continues_from_the_shipped_weights(tmp_path):
    """The shipped fp16 weights are enough to continue training (the full checkpoint is too big to ship)."""
    from safetensors import safe_open

    from comfyui_core2.toy.scenes import train as scenes_train

    with safe_open(str(SCENES.weights), "pt") as f:
        shipped_steps = int(f.metadata()["trained_steps"])
    out = tmp_path / "more.safetensors"
    trainer = scenes_train.Trainer(scenes_train.Settings(batch=2, save_every=1), out)
    trainer.warm_start(SCENES.weights)
    assert trainer.step == shipped_steps
    loss = trainer.train_step()
    assert loss == loss and loss < 1.0  # finite, and far below an untrained model's ~1.3
    trainer.save()
    assert world.load(out).spec.name == "scenes" and trainer.ckpt.is_file()


def test_cooldown_decays_the_learning_rate_to_zero_over_the_last_steps():
    """Warmup-stable-decay: full rate after the warmup, then linear to 0 over the last `cooldown` steps."""
    from comfyui_core2.toy.scenes import train as scenes_train

    s = scenes_train.Settings(steps=1000, lr=1e-3, warmup=100, cooldown=200)
    rate = lambda step: scenes_train.learning_rate(s, step)  # noqa: E731
    assert rate(0) == pytest.approx(1e-5) and rate(500) == pytest.approx(1e-3) and rate(800) == pytest.approx(1e-3)
    assert rate(900) == pytest.approx(5e-4) and rate(999) == pytest.approx(5e-6)
    assert scenes_train.learning_rate(scenes_train.Settings(steps=1000, lr=1e-3), 999) == pytest.approx(1e-3)


def test_a_warm_start_warms_its_fresh_optimiser_up_again():
    """A warm start's fresh optimiser does not jump to the full rate at an absolute step past the warmup."""
    from comfyui_core2.toy.scenes import train as scenes_train

    s = scenes_train.Settings(steps=30000, lr=1e-3, warmup=100)
    assert scenes_train.learning_rate(s, 20000, start=20000) == pytest.approx(1e-5)
    assert scenes_train.learning_rate(s, 20099, start=20000) == pytest.approx(1e-3)
    assert scenes_train.learning_rate(s, 20000) == pytest.approx(1e-3)  # a run that started at 0 is long warm


def test_a_time_boxed_run_plans_its_steps_and_cooldown_from_the_measured_speed():
    """--minutes: the step count fits the time left, the cooldown is a share of this run, --steps stays a bound."""
    from comfyui_core2.toy.scenes import train as scenes_train

    s = scenes_train.Settings(steps=1_000_000, cooldown=0)
    plan = scenes_train.plan_for_time(s, step=17600, start=17500, seconds_per_step=0.1, seconds_left=300.0,
                                      cooldown_fraction=0.25)
    assert plan.steps == 17600 + 3000 and plan.cooldown == int(0.25 * 3100)
    assert scenes_train.learning_rate(plan, plan.steps - 1, start=17500) < 0.01 * s.lr  # the cooldown ends the run
    bounded = scenes_train.plan_for_time(replace(s, steps=18000), 17600, 17500, 0.1, 300.0, 0.25)
    assert bounded.steps == 18000


def test_a_resumed_time_boxed_run_counts_the_time_of_its_earlier_parts(tmp_path):
    """--minutes bounds the whole run: a part resumed after the budget is spent trains one step and stops, and a
    checkpoint whose plan changed the step count and cooldown still resumes."""
    from comfyui_core2.toy.scenes import train as scenes_train

    out = tmp_path / "boxed.safetensors"
    first = scenes_train.Trainer(scenes_train.Settings(batch=2, cooldown=123), out)
    first.train_step()
    first.seconds = 600.0
    first.save()
    scenes_train.train(scenes_train.Settings(steps=1000, batch=2), out, minutes=10.1)  # 606 s, 600 spent
    state = torch.load(first.ckpt, weights_only=True)
    assert state["step"] == 2 and state["seconds"] > 600.0
    with pytest.raises(ValueError, match="other settings"):  # what shapes the model still has to match
        scenes_train.train(scenes_train.Settings(steps=1000, batch=2, lr=1e-3), out)


def test_a_stop_request_finishes_the_step_saves_and_resumes(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) during a step: the step completes, everything is saved, and the same command goes on."""
    import os
    import signal

    from comfyui_core2.toy.scenes import train as scenes_train

    step = scenes_train.Trainer.train_step

    def step_then_interrupt(self):
        loss = step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step, as a user's Ctrl-C does
        return loss

    monkeypatch.setattr(scenes_train.Trainer, "train_step", step_then_interrupt)
    out = tmp_path / "stopped.safetensors"
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    with pytest.raises(SystemExit) as stopped:
        scenes_train.train(scenes_train.Settings(steps=1000, batch=2, save_every=1000), out)
    assert stopped.value.code == 130
    assert torch.load(out.with_name("stopped.ckpt.pt"), weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler_before  # the caller's handler is given back
    monkeypatch.setattr(scenes_train.Trainer, "train_step", step)
    scenes_train.train(scenes_train.Settings(steps=5, batch=2), out)
    assert torch.load(out.with_name("stopped.ckpt.pt"), weights_only=True)["step"] == 5


def test_a_bf16_training_step_on_the_cpu_is_finite(tmp_path):
    from comfyui_core2.toy.scenes import train as scenes_train

    trainer = scenes_train.Trainer(scenes_train.Settings(batch=2), tmp_path / "b.safetensors", bf16=True)
    assert trainer.bf16 and not scenes_train.Trainer(scenes_train.Settings(batch=2), tmp_path / "c").bf16
    loss = trainer.train_step()
    assert loss == loss and 0.0 < loss < 10.0


def test_bf16_on_a_cpu_without_bf16_units_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    """Emulated bf16 ran ~30x slower than float32 on an AVX2-only CPU: the run stops with advice, writes nothing."""
    from comfyui_core2.toy.scenes import train as scenes_train

    assert isinstance(scenes_train.cpu_has_bf16(), bool)
    monkeypatch.setattr(scenes_train, "cpu_has_bf16", lambda: False)
    built = []
    monkeypatch.setattr(scenes_train.Trainer, "__init__", lambda self, *a, **k: built.append(1))
    out = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="leave out --bf16"):
        scenes_train.train(scenes_train.Settings(steps=2, batch=2), out, bf16=True)
    assert not built and not list(tmp_path.iterdir())


def test_compile_without_a_compiler_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    from comfyui_core2.toy.scenes import train as scenes_train

    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert scenes_train.cpu_compiler() is None
    built = []
    monkeypatch.setattr(scenes_train.Trainer, "__init__", lambda self, *a, **k: built.append(1))
    with pytest.raises(ValueError, match="leave out --compile"):
        scenes_train.train(scenes_train.Settings(steps=2, batch=2), tmp_path / "m.safetensors", compile=True)
    assert not built and not list(tmp_path.iterdir())


def test_a_compiled_trainer_keeps_the_names_its_files_use(tmp_path):
    """Compiling in place must not rename the weights (torch.compile's wrapper would prefix them with _orig_mod):
    checkpoints, the EMA and the weights file of a compiled run load in an uncompiled one and in ComfyUI."""
    from comfyui_core2.toy.scenes import train as scenes_train

    plain = scenes_train.Trainer(scenes_train.Settings(batch=2), tmp_path / "a.safetensors")
    compiled = scenes_train.Trainer(scenes_train.Settings(batch=2), tmp_path / "b.safetensors", compile=True)
    assert compiled.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
    assert list(compiled._state()) == list(plain._state()) and list(compiled.ema) == list(plain.ema)
    assert all("_orig_mod" not in k for k in compiled._state())


def test_a_time_box_follows_the_recent_speed_not_a_slow_start():
    """Another job slowed the first 600 steps to 1 s each; after that a step takes 0.25 s. The plan made at step 1600
    uses the recent speed, so the run fills its budget instead of ending half-way; in the cooldown the plan holds."""
    from types import SimpleNamespace

    from comfyui_core2.toy.scenes import train as scenes_train

    cfg = scenes_train.Settings(steps=1_000_000)
    trainer = SimpleNamespace(step=0, seconds=0.0, optimiser_start=0, cfg=cfg)
    box = scenes_train.TimeBox(cfg, trainer, minutes=60, cooldown_fraction=0.25)
    plans = {}
    while trainer.step < trainer.cfg.steps:
        trainer.step += 1
        trainer.seconds += 1.0 if trainer.step <= 600 else 0.25
        box.after_step()
        plans[trainer.step] = trainer.cfg.steps
    assert plans[600] == 600 + int((3600 - 600 - 15) / 1.0)  # the average of the slow start
    assert plans[1600] == 1600 + int((3600 - 850 - 15) / 0.25)  # the speed since step 600
    assert 3600 - 15 - 0.25 * 1000 <= trainer.seconds <= 3600  # the budget is used, not half of it
    assert trainer.cfg.cooldown == int(0.25 * trainer.cfg.steps)


def test_training_refuses_a_step_count_the_model_already_has(tmp_path):
    from comfyui_core2.toy.scenes import train as scenes_train

    with pytest.raises(ValueError, match="pass a larger --steps"):
        scenes_train.train(scenes_train.Settings(steps=10, batch=2), tmp_path / "x.safetensors",
                           init_from=SCENES.weights)


def test_pictures_drawn_on_a_device_match_the_cpu_ones():
    """Training on a GPU draws its pictures there from the same CPU random stream: the same pictures."""
    a = data.render(data.random_labels(4, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    b = data.render(data.random_labels(4, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1),
                    device=torch.device("cpu"))
    assert torch.equal(a, b)
    if torch.cuda.is_available():
        c = data.render(data.random_labels(4, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1),
                        device="cuda")
        assert torch.allclose(a, c.cpu(), atol=1e-4)


def test_the_text_context_layer_starts_as_the_identity():
    """A context layer added to a trained encoder changes nothing until it is trained (warm starts rely on it)."""
    from comfyui_core2.toy import text as toy_text

    torch.manual_seed(0)
    enc = text.encoder()
    assert len(enc.context) == text.CONTEXT_LAYERS >= 1
    ids = toy_text.tokenize_batch(["a small red triangle left of a big blue circle", ""], text.VOCAB, text.SYNONYMS)
    plain = toy_text.ToyTextEncoder(vocab=text.VOCAB, synonyms=text.SYNONYMS)
    plain.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("context.")})
    (tokens, pooled), (plain_tokens, plain_pooled) = enc(ids), plain(ids)
    assert torch.allclose(tokens, plain_tokens, atol=1e-6) and torch.allclose(pooled, plain_pooled, atol=1e-6)
    # seven words in fixed places: the second object starts at the same token whatever the relation
    for rel in data.RELATIONS:
        words = toy_text.words(f"a small red triangle {rel} a big blue circle", text.SYNONYMS)
        assert len(words) == 7 and words[4:] == ["big", "blue", "circle"], words


def test_an_older_scenes_file_is_refused_but_training_continues_from_it(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from comfyui_core2.toy.scenes import model as scenes_model, train as scenes_train

    with safe_open(str(SCENES.weights), "pt") as f:
        meta = dict(f.metadata())
    old = tmp_path / "v1.safetensors"
    sd = {k: v for k, v in load_file(str(SCENES.weights)).items() if ".context." not in k}
    save_file(sd, str(old), metadata=meta | {"version": "1"})
    with pytest.raises(ValueError, match="retrain it"):
        world.load(old)
    trainer = scenes_train.Trainer(scenes_train.Settings(batch=2), tmp_path / "new.safetensors")
    trainer.warm_start(old)
    assert torch.equal(trainer.encoder.word.weight.half(), sd[scenes_model.TEXT_PREFIX + "word.weight"])


def test_a_shallower_model_trains_loads_and_keeps_its_depth(tmp_path):
    """--depth 3 (the CPU rebuild's option): the file records its layout, the world loader builds that depth from
    it, a warm start at another depth is refused with the option to pass, and a checkpoint written before the option
    existed still resumes at the shipped depth."""
    from safetensors import safe_open

    from comfyui_core2.toy.scenes import model as scenes_model
    from comfyui_core2.toy.scenes import train as scenes_train

    out = tmp_path / "d3.safetensors"
    trainer = scenes_train.Trainer(scenes_train.Settings(batch=2, depth=3), out)
    assert trainer.net.hidden_size == 192 and len(trainer.net.joint_blocks) == 3
    trainer.train_step()
    trainer.save()
    with safe_open(str(out), "pt") as f:
        assert scenes_model.depth_of(f.metadata()) == 3
    loaded = world.load(out)
    assert len(loaded.patcher.model.diffusion_model.joint_blocks) == 3
    with pytest.raises(ValueError, match="pass --depth 3"):
        scenes_train.Trainer(scenes_train.Settings(batch=2), tmp_path / "d4.safetensors").warm_start(out)
    with pytest.raises(ValueError, match="not one of"):
        scenes_train.Trainer(scenes_train.Settings(batch=2, depth=7), tmp_path / "d7.safetensors")

    old = tmp_path / "old.safetensors"
    first = scenes_train.Trainer(scenes_train.Settings(batch=2), old)
    first.train_step()
    first.save()
    state = torch.load(first.ckpt, weights_only=True)
    del state["settings"]["depth"]  # as written before --depth
    torch.save(state, first.ckpt)
    again = scenes_train.Trainer(scenes_train.Settings(batch=2), old)
    again.resume()
    assert again.step == 1
