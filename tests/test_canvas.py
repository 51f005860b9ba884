"""What an artist sees on the canvas (issue 19): text on the nodes, honest verdicts and plots, seeds that stay put,
sizes that fit the model, KSampler's tooltips, and a summary line that tells passes from seconds."""
from __future__ import annotations

import sys
import types

import pytest
import torch


@pytest.fixture
def shown(monkeypatch):
    """A stand-in for the running ComfyUI's PromptServer: collects (node id, text) sent as progress text."""
    sent = []
    inst = types.SimpleNamespace(send_progress_text=lambda text, node_id, sid=None: sent.append((node_id, text)))
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=inst)))
    return sent


# --- feedback --------------------------------------------------------------------------------------------------------
def test_node_text_goes_to_the_server_when_there_is_one(shown, monkeypatch):
    from comfyui_core2.nodes import feedback

    t = feedback.NodeText("12", interval=3600)
    t.show("first")
    t.show("throttled")  # within the interval: not sent
    t.show("last", final=True)
    assert shown == [("12", "first"), ("12", "last")]
    out = feedback.with_text("done", ("a", 1), node_id=12)
    assert out == {"ui": {"text": ["done"]}, "result": ("a", 1)} and shown[-1] == ("12", "done")
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace())  # a ComfyUI without send_progress_text
    feedback.NodeText("12").show("nobody listens", final=True)  # no error
    assert len(shown) == 3


def test_node_text_falls_back_to_the_executing_node(shown, monkeypatch):
    from comfyui_core2.nodes import feedback

    monkeypatch.setattr(feedback, "_executing_node_id", lambda: "9")
    feedback.NodeText().show("hello", final=True)
    assert shown == [("9", "hello")]


# --- Reflect: verdict, plot, progress, resume trap ---------------------------------------------------------------------
def test_verdict_reads_the_held_out_error_not_the_mixed_score():
    from comfyui_core2.core2 import advice

    # issue 19's workflow 08: held-out relative error 1.014, mixed score 0.909
    m = {"rel_err": 1.014, "score": 0.909, "loss": "mixed", "validation_on": "held-out prompts and seeds"}
    assert advice.no_better_than_cfg1(m)
    assert advice.verdict(m).startswith("no better than cfg 1 (held-out error 1.01): collect more seeds")
    assert advice.verdict({**m, "rel_err": 0.62}) == "useful: held-out error 0.62 (cfg 1 = 1.00)"
    assert advice.verdict({**m, "rel_err": 0.95}).startswith("barely better than cfg 1")
    assert "(held-out error 0.996)" in advice.verdict({**m, "rel_err": 0.9957})  # not a contradictory "1.00"
    on_train = {**m, "rel_err": 0.5, "validation_on": "training prompts (no held-out prompts: ...)"}
    assert not advice.no_better_than_cfg1(on_train) and advice.verdict(on_train).startswith("not checked on held-out")


def test_loss_plot_draws_the_superscript_and_names_the_score(monkeypatch):
    from PIL import Image, ImageDraw, ImageFont

    from comfyui_core2.core2 import loss_plot, pictext

    def render(fn):
        img = Image.new("RGB", (200, 40), (255, 255, 255))
        fn(ImageDraw.Draw(img))
        return list(img.getdata())

    # PIL's own font, which has no '²' (systems without a TrueType font get it)
    monkeypatch.setattr(pictext, "font", lambda size: ImageFont.load_default(size=size))
    font = pictext.font(loss_plot.FONT_SIZE)
    assert pictext.missing(font, "²")
    ours = render(lambda d: pictext.draw_text(d, (2, 10), "CoRe²", (0, 0, 0)))
    plain = render(lambda d: d.text((2, 10), "CoRe²", fill=(0, 0, 0), font=font))  # the font's own: a box for ²
    bare = render(lambda d: pictext.draw_text(d, (2, 10), "CoRe", (0, 0, 0)))
    assert ours != plain and ours != bare and plain != bare
    img = loss_plot.draw([(1, 1.0), (2, 0.8)], [(2, 0.9)], val_label="validation score (mixed loss)",
                         verdict="no better than cfg 1 (held-out error 1.01)")
    assert img.size == (768, 432)


def test_loss_plot_wraps_a_long_verdict_inside_the_picture():
    """The browser screenshot of workflow 08 showed the verdict running off the loss curve's right edge."""
    from comfyui_core2.core2 import loss_plot, pictext

    verdict = "barely better than cfg 1 (held-out error 0.957): collect more seeds and prompts for a useful model"
    lines = pictext.wrap(verdict, 768 - 70, loss_plot.FONT_SIZE)
    assert len(lines) >= 2 and " ".join(lines) == verdict
    assert all(pictext.text_width(line, loss_plot.FONT_SIZE) <= 768 - 70 for line in lines)
    assert pictext.wrap("short", 700) == ["short"] and pictext.wrap("", 700) == []
    assert loss_plot.draw([(1, 1.0), (2, 0.8)], [(2, 0.9)], verdict=verdict).size == (768, 432)


def test_reflect_progress_shows_step_loss_and_time_left(shown, monkeypatch):
    from comfyui_core2.nodes import feedback, reflect

    clock = iter([100.0, 104.0])
    on_step = reflect._progress(10, feedback.NodeText("3", interval=0), clock=lambda: next(clock))
    on_step(1, 10, 0.5)
    on_step(5, 10, 0.25)  # 4 steps in 4 s: 5 left
    assert shown[-1] == ("3", "training: step 5/10 · loss 0.2500 · 5 s left")


def test_resume_refuses_when_new_data_would_not_be_trained(comfy_folders, tmp_path):
    """Issue 19's resume trap: more data collected, steps not raised, resume on: 300 → 300 trained nothing."""
    from testkit import collect_helpers
    from testkit import tiny_models

    from comfyui_core2.core2 import advice
    from comfyui_core2.core2.train import TrainSettings, train
    from comfyui_core2.nodes import paths, reflect

    folder = paths.datasets_dir() / "grow"
    collect_helpers.collect(tiny_models.build_sdxl(), folder, n_prompts=4, seeds=(1,), batch=1, steps=4, cfg=5.0)
    out = paths.weak_model_save_dir() / "grow.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    train(folder, out, TrainSettings(steps=3, batch_size=4, size="small", val_fraction=0.25))
    assert advice.resume_would_skip_new_data([out], folder, 3) is None  # same data: nothing new to train on
    with open(folder / "items.jsonl", "a", encoding="utf-8") as f:
        f.write("\n")  # the dataset changed since training (here: its item log grew by an empty line)
    msg = advice.resume_would_skip_new_data([out], folder, 3)
    assert msg and "Raise steps" in msg and "step 3" in msg
    assert advice.resume_would_skip_new_data([out], folder, 4) is None  # more steps: resume trains on the new data
    before = out.stat().st_mtime_ns
    args = dict(dataset="grow", size="small", steps=3, batch_size=4, learning_rate=1e-3, seed=0, val_fraction=0.25,
                save_name="grow")
    with pytest.raises(ValueError, match="Raise steps"):
        reflect.CoRe2Reflect().reflect(resume=True, **args)
    assert out.stat().st_mtime_ns == before  # refused before any work


# --- Collect Batch: text, seeds, sizes -------------------------------------------------------------------------------
def test_collect_batch_tells_its_progress_and_counts_on_the_node(comfy_folders, tiny_sd15, shown):
    from comfyui_core2.nodes import collect_batch, feedback

    tm = tiny_sd15
    p2 = [[tm.positive[0][0] * -0.7 + 0.1, dict(tm.positive[0][1])]]
    conds = {"a red fox": tm.positive, "a blue car": p2, "": tm.negative}
    args = dict(seeds_per_prompt=1, seed=3, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", width=128,
                height=128, dataset_name="texts", store_x=False)
    res = collect_batch.collect_batch(tm.patcher, ["a red fox", "a blue car"], "", conds.__getitem__,
                                      text=feedback.NodeText("4", interval=0), **args)
    texts = [t for _, t in shown]
    assert texts[0].startswith("prompt 1/2: a red fox") and texts[1].startswith("prompt 2/2: a blue car")
    assert collect_batch.batch_report(res) == "2 new, 0 already present in texts"
    again = collect_batch.collect_batch(tm.patcher, ["a red fox", "a blue car"], "", conds.__getitem__, **args)
    assert collect_batch.batch_report(again).startswith("nothing new: all 2 trajectories are already in texts")


def test_seeds_that_choose_data_stay_fixed_in_the_frontend():
    """The frontend adds control_after_generate = randomize to INT inputs named seed unless the input says
    control_after_generate itself (it reads the option with ??): Collect Batch, Reflect and Prompt List say False."""
    from comfyui_core2.nodes import collect_batch, reflect, refine, toy
    from tools import make_workflows as mw

    for cls in (collect_batch.CoRe2CollectBatch, reflect.CoRe2Reflect, toy.CoRe2ToyPromptList):
        opts = cls.INPUT_TYPES()["required"]["seed"][1]
        assert opts["control_after_generate"] is False, cls.__name__
        assert not mw.Input("seed", "INT", opts).has_control  # the generated workflows hold no control value for it
    assert refine.CoRe2KSampler.INPUT_TYPES()["required"]["seed"][1]["control_after_generate"] is True  # as KSampler
    assert mw.Input("seed", "INT", {}).has_control and not mw.Input("count", "INT", {}).has_control


def test_size_that_does_not_fit_the_model_is_refused_with_what_to_type(comfy_folders):
    from comfyui_core2.nodes import collect_batch, model_info
    from comfyui_core2.toy import world

    toy = world.load()
    assert model_info.latent_size_limits(toy.patcher)[0] == 16  # declared by the toy model's config
    assert model_info.size_problem(toy.patcher, 128, 128) is None
    msg = model_info.size_problem(toy.patcher, 32, 32)
    assert "set width and height to 128" in msg and "16x16" in msg
    with pytest.raises(ValueError, match="set width and height to 128"):
        collect_batch.collect_batch(toy.patcher, ["a red triangle at the top"], "", lambda t: None, seeds_per_prompt=1,
                                    seed=0, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", width=32,
                                    height=32, dataset_name="wrong_size", store_x=True)
    assert not (comfy_folders / "output" / "core2_datasets" / "wrong_size").exists()


def test_size_limit_of_an_mmdit_comes_from_its_position_table(tiny_sd3):
    from comfyui_core2.nodes import model_info

    dm = tiny_sd3.patcher.model.diffusion_model
    pe_max, patch = getattr(dm, "pos_embed_max_size", None), getattr(dm, "patch_size", None)
    if not (pe_max and patch):
        pytest.skip("this tiny SD3 has no position-table limit")
    largest = pe_max * patch
    assert model_info.latent_size_limits(tiny_sd3.patcher)[1] == largest
    assert model_info.size_problem(tiny_sd3.patcher, 8 * largest, 8 * largest) is None
    assert "at most" in model_info.size_problem(tiny_sd3.patcher, 8 * (largest + 2), 8 * largest)


# --- the samplers ----------------------------------------------------------------------------------------------------
def test_core2_samplers_carry_ksamplers_tooltips_and_hide_what_does_nothing():
    from comfyui_core2.nodes import inputs, refine, reflect

    for cls in (refine.CoRe2KSampler, refine.CoRe2KSamplerAdvanced, refine.CoRe2GuiderNode):
        it = cls.INPUT_TYPES()
        for name, spec in it["required"].items():
            if name in inputs.KSAMPLER_TOOLTIPS:
                assert spec[1]["tooltip"] == inputs.KSAMPLER_TOOLTIPS[name], (cls.__name__, name)
        assert it["required"]["zigzag_steps"][1]["advanced"] is True
        assert it["optional"]["inv_cfg"][1]["advanced"] is True
    assert reflect.CoRe2LoadWeakModel.INPUT_TYPES()["optional"]["lora_index_mode"][1]["advanced"] is True
    try:
        import nodes as comfy_nodes
    except ImportError:  # notcomfy has no nodes.py
        return
    for name, spec in comfy_nodes.KSampler.INPUT_TYPES()["required"].items():
        assert inputs.KSAMPLER_TOOLTIPS[name] == spec[1]["tooltip"], name  # word for word ComfyUI's


def test_summary_says_when_fewer_passes_did_not_mean_less_time():
    from comfyui_core2.core2.schedule import RunStats

    def run(slow_s, fast_s):
        t = [0.0]
        st = RunStats(clock=lambda: t[0])
        for step in range(10):
            slow = step < 3
            t[0] += 5.0 if step == 0 else (slow_s if slow else fast_s)  # the first one also loads the model
            st.record(step, "slow" if slow else "fast", 2 if slow else 1, True)
        return st.summary(t[0], "w")

    same = run(0.10, 0.10)
    assert "13 model passes vs 20 for CFG (35% fewer passes)" in same
    assert "fewer passes did NOT mean less time" in same and "measured" in same
    faster = run(0.10, 0.05)
    assert "about 35% less time than CFG" in faster and "NOT" not in faster


def test_sampler_shows_its_summary_on_the_node(tiny_sd15, shown, monkeypatch):
    from comfyui_core2.core2.weak import IdentityWeakModel
    from comfyui_core2.nodes import feedback, refine

    monkeypatch.setattr(feedback, "_executing_node_id", lambda: "21")
    tm = tiny_sd15
    refine.CoRe2KSampler().sample(tm.patcher, 0, 4, 5.0, "euler", "normal", tm.positive, tm.negative,
                                  {"samples": tm.empty_latent(1)}, 1.0, IdentityWeakModel(), 1.5, 2)
    node, text = shown[-1]
    assert node == "21" and text.startswith("CoRe² (core): 4 steps (2 slow, 2 fast)") and "measured" in text


# --- the workflows ---------------------------------------------------------------------------------------------------
def _workflows():
    import json

    from conftest import ROOT

    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "workflows").glob("*.json"))}


def test_workflows_say_where_to_download_the_models_they_load():
    """properties.models ({name, url, directory}) on every node that loads a downloadable file: the frontend's
    missing-models dialog reads it. Bundled toy models and weak models the user trains (toy_weak, my_sdxl_weak) have
    none, so a fresh install shows no missing-model dialog for them."""
    loaders = {"CheckpointLoaderSimple": "checkpoints", "UNETLoader": "diffusion_models", "DualCLIPLoader": "text_encoders",
               "VAELoader": "vae", "CoRe2LoadWeakModel": "core2"}
    seen = set()
    for name, wf in _workflows().items():
        for node in wf["nodes"]:
            files = [v for v in node.get("widgets_values", []) if isinstance(v, str) and v.endswith((".safetensors", ".pth"))]
            entries = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
            for f in files:
                if node["type"] in loaders and (node["type"] != "CoRe2LoadWeakModel" or f.endswith(".pth")):
                    assert f in entries, (name, node["type"], f)
                    e = entries[f]
                    assert e["url"].startswith("https://huggingface.co/") and e["url"].endswith("/" + f.split("/")[-1])
                    assert e["directory"] == loaders[node["type"]], (name, f)
                    seen.add(f)
                else:
                    assert f not in entries  # bundled (toy worlds) or trained by the user: nothing to download
    assert {"sd_xl_base_1.0.safetensors", "sdxl_noise_model.pth", "sd35_noise_model.pth", "ae.safetensors"} <= seen


def test_sd35_workflow_runs_the_official_weights_as_its_note_says():
    wf = _workflows()["04 CoRe2 KSampler (SD3.5 Large)"]
    note = wf["nodes"][0]["widgets_values"][0]
    ks = next(n for n in wf["nodes"] if n["type"] == "CoRe2KSampler")
    neg_link = next(i["link"] for i in ks["inputs"] if i["name"] == "negative")
    neg_id = next(l[1] for l in wf["links"] if l[0] == neg_link)
    neg = next(n for n in wf["nodes"] if n["id"] == neg_id)
    assert ks["widgets_values"][3] == 3.5 and "cfg 3.5" in note  # seed, control, steps, cfg
    assert neg["widgets_values"][0] == "" and "EMPTY negative" in note


def test_every_workflow_has_a_thumbnail_in_the_template_browser():
    from conftest import ROOT
    from tools import make_workflows, render_thumbnails

    for name in _workflows():
        jpg = ROOT / "workflows" / f"{name}.jpg"
        assert jpg.is_file(), f"{jpg.name} missing: python -m tools.render_thumbnails --cards (or without --cards)"
        assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and jpg.stat().st_size < 100_000
    assert set(make_workflows.CARDS) | set(make_workflows.TOY_WORKFLOWS) == set(_workflows())
    assert render_thumbnails.title_card("04 CoRe2 KSampler (SD3.5 Large)").size == (512, 384)


def test_nodes_use_only_the_public_dataset_api():
    """Issue 21: the Collect nodes called the private ds._read_manifest and repeated DatasetWriter's header check."""
    import re

    from conftest import ROOT

    for p in sorted((ROOT / "nodes").glob("*.py")):
        text = p.read_text(encoding="utf-8")
        assert not re.search(r"\bds\._[a-z]", text), p.name
        assert "refusing to mix" not in text, p.name  # the one message lives in core2/dataset.py
