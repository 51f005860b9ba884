"""CoRe² Compare and CoRe² Grid Image: CFG vs CoRe² settings, one labelled row each, passes and seconds."""
import numpy as np
import pytest
import torch
from PIL import ImageFont

from comfyui_core2.core2 import grid, pictext
from comfyui_core2.nodes import compare
from test_refine import AffineWeak, core2, reference


def _compare(tm, latent, slow="2", w2s="1.5, 2", include_cfg=True, steps=6, cfg=5.0):
    return compare.CoRe2Compare().compare(tm.patcher, 3, steps, cfg, "euler", "normal", tm.positive, tm.negative,
                                          {"samples": latent}, AffineWeak(), slow, w2s, include_cfg)


def test_rows_are_cfg_then_each_setting_sampled_like_the_samplers(tiny_sd15):
    tm = tiny_sd15
    latent = tm.empty_latent(2)
    out, spec, summary = _compare(tm, latent, slow="2, 4", w2s="1.5, 2")
    assert spec.rows == ["CFG (cfg 5)", "CoRe² 2 slow, w2s 1.5", "CoRe² 2 slow, w2s 2", "CoRe² 4 slow, w2s 1.5",
                         "CoRe² 4 slow, w2s 2"]
    assert spec.columns == 2 and out["samples"].shape == (10, 4, 16, 16)
    rows = out["samples"].split(2)
    assert (rows[0] - reference(tm, latent, 3, 6, 5.0, "euler", "normal")).abs().max() <= 1e-5  # plain CFG
    assert torch.equal(rows[2], core2(tm, latent, 3, 6, 5.0, "euler", "normal", AffineWeak(), 2.0, 2))
    assert torch.equal(rows[3], core2(tm, latent, 3, 6, 5.0, "euler", "normal", AffineWeak(), 1.5, 4))
    passes = [int(c[0].split(" passes")[0]) for c in spec.captions]
    assert passes == [12, 8, 8, 10, 10]  # 6 steps: CFG 2 a step; k slow steps 2, the rest 1
    assert all(c[0] == c[1] and c[0].endswith(" s") for c in spec.captions)
    assert summary.splitlines()[0].startswith("CFG (cfg 5): 12 passes, ")


def test_without_the_cfg_row_and_bad_lists(tiny_sd15):
    tm = tiny_sd15
    out, spec, _ = _compare(tm, tm.empty_latent(1), slow="0", w2s="1.5", include_cfg=False, steps=3)
    assert spec.rows == ["CoRe² 0 slow, w2s 1.5"] and spec.captions == [["3 passes, " + spec.captions[0][0].split(", ")[1]]]
    with pytest.raises(ValueError, match="slow_steps: 'three' is not a comma-separated list of int"):
        _compare(tm, tm.empty_latent(1), slow="three")
    with pytest.raises(ValueError, match="w2s_scale is empty"):
        _compare(tm, tm.empty_latent(1), w2s=" , ")
    with pytest.raises(ValueError, match="negative value"):
        _compare(tm, tm.empty_latent(1), slow="-1")


def test_grid_image_lays_out_rows_labels_and_captions():
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)]
    images = np.stack([np.ones((32, 32, 3)) * np.array(c) for c in colours]).astype(np.float32)
    spec = grid.GridSpec(["CFG", "CoRe² 3 slow, w2s 1.5"], 3, [["20 passes, 0.10 s"] * 3, ["13 passes, 0.07 s"] * 3],
                         "10 steps")
    (out,) = compare.CoRe2GridImage().draw(torch.from_numpy(images), spec)
    assert out.shape[0] == 1 and out.shape[-1] == 3
    arr = (out[0].numpy() * 255).round().astype(np.uint8)
    red, yellow = np.array([255, 0, 0]), np.array([255, 255, 0])
    found = {tuple(c) for c in arr.reshape(-1, 3)}
    assert all(tuple((np.array(c) * 255).astype(np.uint8)) in found for c in colours)
    ys, xs = np.nonzero((arr == red).all(-1))
    assert ys.max() - ys.min() + 1 == grid.MIN_TILE and xs.max() - xs.min() + 1 == grid.MIN_TILE  # 32 px → 128
    ys2, xs2 = np.nonzero((arr == yellow).all(-1))
    assert xs2.min() == xs.min() and ys2.min() > ys.max()  # row 2 under row 1, same column
    label = arr[ys.min():ys.max(), :xs.min() - 4]
    caption = arr[ys.max() + 2:ys2.min() - 2, xs.min():xs.max()]
    assert (label < 128).any() and (caption < 200).any()  # text drawn left of the row and under the picture
    with pytest.raises(ValueError, match=r"2 rows × 3 columns = 6 pictures, but 5 came in"):
        compare.CoRe2GridImage().draw(torch.from_numpy(images[:5]), spec)


def test_text_falls_back_where_the_font_has_no_superscript_two():
    builtin = ImageFont.load_default(size=14)  # PIL's own font (Aileron) has no '²': it would draw a box
    assert pictext.missing(builtin, "²") and not pictext.missing(builtin, "2")
    assert pictext._drawable(builtin, "CoRe² 3 slow → x") == ["CoRe", " 3 slow -> x"]  # raised 2 between the parts
    f = pictext.font(14)
    assert not pictext.missing(f, "C")
    assert pictext.text_width("CoRe²", 14) > pictext.text_width("CoRe", 14) > 0


def test_models_are_loaded_before_the_first_row_is_timed(tiny_sd15, monkeypatch):
    import comfy.model_management as mm

    calls = []
    real = compare.run_ksampler
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, *a, **k: calls.append(("load", list(models))))
    monkeypatch.setattr(compare, "run_ksampler", lambda *a, **k: (calls.append(("row",)), real(*a, **k))[1])
    _compare(tiny_sd15, tiny_sd15.empty_latent(1), slow="1", w2s="1.5", steps=2)
    assert calls[0][0] == "load" and calls[0][1][0] is tiny_sd15.patcher and calls[1] == ("row",)  # then sampling loads
