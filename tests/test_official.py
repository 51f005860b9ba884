"""Official CoRe² weak nets (core2/official): keys/shapes vs the reference lists, strict loading, LoRA merge,
step → LoRA quirks, prompt recipes, the WeakModel contract, errors, the safetensors converter."""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import pytest
import torch

from comfyui_core2.core2 import official
from comfyui_core2.core2.official import convert, lora, net, recipes, steps
from comfyui_core2.core2.weak import PromptFeatures, StepInfo

REF = Path("/work/shared/reference")
ROOT = Path(__file__).resolve().parent.parent


def reference_shapes(variant: str) -> dict:
    """{key: shape} from core2_keys_<variant>.txt ({j} expanded)."""
    path = REF / f"core2_keys_{variant}.txt"
    if not path.is_file():
        pytest.skip(f"reference key list {path} not available")
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, mult = line.split("\t")
        shape = tuple(int(x) for x in re.findall(r"\d+", shape))
        n = int(mult[1:])
        for j in range(n if "{j}" in key else 1):
            out[key.replace("{j}", str(j))] = shape
    return out


# Reduced widths with the official key SET (same layers, same LoRA count): tiny tensors, real strict loads.
SMALL = {
    "sdxl": net.SDXL.scaled(heads=1, text_dim=24, text_tokens=2 * 5, pool_dim=2 * 6, lora_rank=3, hidden=8,
                            pos_embed_max_size=8),
    "sd35": net.SD35.scaled(heads=1, text_dim=24, text_tokens=2 * (77 + 4), pool_dim=24, lora_rank=3, hidden=8,
                            pos_embed_max_size=8),
}


@functools.lru_cache(maxsize=None)
def meta_shapes(cfg: net.NetConfig) -> dict:
    return {k: v.shape for k, v in net.PromptNet(cfg, device="meta").state_dict().items()}


def random_state_dict(cfg: net.NetConfig, seed: int = 0) -> dict:
    """Random values for every tensor, LoRA B and the zero-initialised layers included."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in meta_shapes(cfg).items():
        v = torch.empty(shape, device="meta")
        fan = v[0].numel() if v.ndim > 1 else 1
        t = torch.randn(v.shape, generator=g) / math.sqrt(fan)
        if k.endswith(".B"):
            t = t * 0.5
        if v.ndim == 1 and k.endswith("weight"):
            t = 1 + 0.1 * t
        sd[k] = t
    return sd


@pytest.fixture(scope="module")
def small_sdxl():
    return random_state_dict(SMALL["sdxl"], 1)


# -- keys and shapes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,n_keys", [("sdxl", 4505), ("sd35", 3908)])
def test_full_size_keys_and_shapes_equal_reference(variant, n_keys):
    ref = reference_shapes(variant)
    assert len(ref) == n_keys
    built = {k: tuple(v.shape) for k, v in net.PromptNet(net.CONFIGS[variant], device="meta").state_dict().items()}
    assert set(built) == set(ref)
    assert [k for k in ref if built[k] != ref[k]] == []
    assert official.is_official_state_dict(ref) == variant
    lin = [m for m in net.PromptNet(net.CONFIGS[variant], device="meta").modules() if isinstance(m, lora.LoRABankLinear)]
    assert len(lin) == {"sdxl": 44, "sd35": 67}[variant]
    assert {m.rank for m in lin} == {net.CONFIGS[variant].lora_rank}


@pytest.mark.parametrize("variant", ["sdxl", "sd35"])
def test_strict_load_of_reduced_net_uses_every_key(variant):
    ref = reference_shapes(variant)
    sd = random_state_dict(SMALL[variant])
    assert set(sd) == set(ref)  # same key set as the released file
    weak = official.load_official(sd, device="cpu", dtype=torch.float32)
    assert weak.variant == variant and weak.net.cfg == SMALL[variant]
    loaded = weak.net.state_dict()
    assert set(loaded) == set(sd)
    for k, t in sd.items():  # the very tensors of the file: every key used, nothing re-initialised
        assert loaded[k].data_ptr() == t.data_ptr(), k


def test_full_size_sdxl_strict_load_bf16_shares_memory():
    """A complete SDXL-shaped bf16 state dict (1 GB, uninitialised values) loads strictly without copies."""
    shapes = reference_shapes("sdxl")
    sd = {k: torch.empty(s, dtype=torch.bfloat16) for k, s in shapes.items()}
    weak = official.load_official(sd, device="cpu", dtype=torch.bfloat16)
    assert weak.net.cfg == net.SDXL and weak.n_lora == 50
    loaded = weak.net.state_dict()
    assert all(loaded[k].data_ptr() == sd[k].data_ptr() for k in sd)
    assert not any(p.requires_grad for p in weak.parameters())


def test_sincos_table_formula():
    t = net.sincos_pos_embed(1536, 192, 64)
    assert t.shape == (1, 192 * 192, 1536) and t.dtype == torch.float32
    grid = t.reshape(192, 192, 1536)
    r, c = 50, 7
    omega = 1.0 / 10000 ** (torch.arange(384, dtype=torch.float64) / 384)
    assert torch.allclose(grid[r, c, :384].double(), torch.sin(c / 3 * omega), atol=1e-6)
    assert torch.allclose(grid[r, c, 384:768].double(), torch.cos(c / 3 * omega), atol=1e-6)
    assert torch.allclose(grid[r, c, 768:1152].double(), torch.sin(r / 3 * omega), atol=1e-6)
    assert torch.allclose(grid[r, c, 1152:].double(), torch.cos(r / 3 * omega), atol=1e-6)


def test_pos_embed_comes_from_the_file(small_sdxl):
    weak = official.load_official(small_sdxl, dtype=torch.float32)
    assert torch.equal(weak.net.pos_embed.pos_embed, small_sdxl["pos_embed.pos_embed"])
    assert not torch.allclose(small_sdxl["pos_embed.pos_embed"], net.sincos_pos_embed(64, 8, 64))


# -- LoRA bank ------------------------------------------------------------------------------------------------------
def test_merged_lora_equals_unmerged(small_sdxl):
    weak = official.load_official(small_sdxl, dtype=torch.float32)
    cfg = weak.net.cfg
    g = torch.Generator().manual_seed(3)
    # SVD-like magnitudes: unit-norm rows of s and d, singular values O(10)
    s = torch.randn(2, 64, cfg.text_tokens, generator=g) / math.sqrt(cfg.text_tokens)
    v = torch.rand(2, 64, generator=g) * 10
    d = torch.randn(2, 64, cfg.text_dim, generator=g) / math.sqrt(cfg.text_dim)
    pooled, noise = torch.randn(2, cfg.pool_dim, generator=g), torch.randn(2, 4, 12, 10, generator=g)
    outs = {}
    for j in (0, 17, 49):
        lora.set_active_lora(weak.net, j)
        for policy in ("never", "always", "auto"):
            lora.set_merge_policy(weak.net, policy)
            with torch.no_grad():
                outs[j, policy] = weak.net(noise, s, v, d, pooled)
    print("merged vs unmerged:", {j: float((outs[j, "always"] - outs[j, "never"]).abs().max()) for j in (0, 17, 49)},
          "output scale", float(outs[0, "never"].abs().max()))
    for j in (0, 17, 49):
        scale = outs[j, "never"].abs().max().clamp_min(1)
        assert (outs[j, "always"] - outs[j, "never"]).abs().max() <= 1e-5 * scale
        assert (outs[j, "auto"] - outs[j, "never"]).abs().max() <= 1e-5 * scale
    assert (outs[0, "never"] - outs[17, "never"]).abs().max() > 1e-3  # the LoRAs do differ
    # the merged weight is W + (A_j B_j)^T, cached for one index only
    layer = weak.net.transformer_blocks[0].attn1.to_q
    p = layer.lora[17]
    assert torch.allclose(layer.merged_weight(17), layer.linear.weight + (p.A @ p.B).t(), atol=1e-6)
    assert layer.merged_weight(17) is layer.merged_weight(17)


def test_unmerged_lora_matches_explicit_formula():
    m = lora.LoRABankLinear(6, 5, True, rank=2, n_lora=3)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(4, 6)
    m.active, m.merge_policy = 2, "never"
    want = x @ m.linear.weight.t() + m.linear.bias + x @ m.lora[2].A @ m.lora[2].B
    assert torch.allclose(m(x), want, atol=1e-5)
    m.active = None
    assert torch.allclose(m(x), x @ m.linear.weight.t() + m.linear.bias, atol=1e-6)


# -- step → LoRA index ----------------------------------------------------------------------------------------------
def test_official_index_quirks():
    seq = [steps.official_lora_index(i, 50, 50) for i in range(50)]
    assert seq[21] == seq[22] == 21 and 22 not in seq and seq[23] == 23
    assert [steps.official_lora_index(i, 25, 50) for i in (10, 11, 12)] == [20, 21, 24]
    assert steps.official_lora_index(44, 100, 50) == 21
    for n in (28, 30, 50):
        assert [steps.official_lora_index(i, n, 28) for i in range(n)] == [28 * i // n for i in range(n)]
    assert [steps.official_lora_index(i, 28, 28) for i in range(28)] == list(range(28))


def test_training_sigma_grids_and_nearest_rule():
    sx = steps.sdxl_training_sigmas()
    all_sigmas = steps.sdxl_discrete_sigmas()
    assert len(sx) == 50 and torch.equal(sx[0], all_sigmas[981]) and torch.equal(sx[-1], all_sigmas[1])
    s3 = steps.sd35_training_sigmas()
    assert len(s3) == 28 and float(s3[0]) == 1.0
    assert abs(float(s3[1]) - 0.9874) < 1e-4 and abs(float(s3[-1]) - 0.0089) < 1e-4
    for grid, log_space in ((sx, True), (s3, False)):
        assert [steps.sigma_nearest_lora_index(float(s), grid, log_space) for s in grid] == list(range(len(grid)))


# -- prompt recipes -------------------------------------------------------------------------------------------------
def test_sdxl_recipe_rows_of_u_zero_negative_and_pooled():
    g = torch.Generator().manual_seed(5)
    D = 300  # narrower than CLIP's 2048 to keep the SVDs fast; still wider than the 154 stacked tokens
    tok, pooled = torch.randn(2, 154, D, generator=g), torch.randn(2, 1280, generator=g)  # 2·77 tokens (long prompt)
    x = recipes.sdxl_inputs(PromptFeatures(tok, pooled), PromptFeatures(torch.ones(2, 77, D), torch.ones(2, 1280)),
                            dtype=torch.float32, text_dim=D)
    assert x.s.shape == (2, 64, 154) and x.v.shape == (2, 64) and x.d.shape == (2, 64, D)
    assert x.pooled.shape == (2, 2560)
    assert torch.equal(x.pooled[:, :1280], torch.zeros(2, 1280)) and torch.equal(x.pooled[:, 1280:], pooled)
    a = torch.cat([torch.zeros(77, D), tok[1, :77]])  # [neg = 0; pos], only the first 77 tokens; sample 1 alone
    u, sv, vh = torch.linalg.svd(a)
    assert torch.equal(x.s[1], u[:64]) and torch.equal(x.v[1], sv[:64]) and torch.equal(x.d[1], vh[:64])
    # rows (not columns) of U: orthonormal rows, ~zero over the zero-negative block
    assert torch.allclose(x.s[1] @ x.s[1].t(), torch.eye(64), atol=1e-4)
    assert x.s[1][:, :77].abs().max() < 1e-4
    assert not torch.allclose(x.s[1], u[:, :64].t(), atol=1e-3)
    # the user's negative is ignored (official zero negative); bf16 is the default dtype, as in the official code
    y = recipes.sdxl_inputs(PromptFeatures(tok[1:], pooled[1:]), None, text_dim=D)
    assert y.s.dtype == y.v.dtype == y.d.dtype == y.pooled.dtype == torch.bfloat16
    assert torch.equal(y.s[0], x.s[1].to(torch.bfloat16)) and torch.equal(y.d[0], x.d[1].to(torch.bfloat16))


def test_sd35_recipe_stack_order_and_t5_length():
    g = torch.Generator().manual_seed(6)
    D, P, t5 = 200, 12, 4  # D > T as in the real sizes (T = 666 < 4096)
    pos = PromptFeatures(torch.randn(1, 77 + 9, D, generator=g), torch.randn(1, P, generator=g))  # T5 too long
    neg = PromptFeatures(torch.randn(1, 77 + 2, D, generator=g), torch.randn(1, P, generator=g))  # T5 too short
    x = recipes.sd35_inputs(pos, neg, dtype=torch.float32, text_dim=D, pooled_dim=P, t5_tokens=t5)
    T = 2 * (77 + t5)
    assert x.s.shape == (1, 64, T) and x.d.shape == (1, 64, D) and x.pooled.shape == (1, 2 * P)
    p_rows = pos.tokens[0, :77 + t5]
    n_rows = torch.cat([neg.tokens[0], neg.tokens[0, -1:].expand(t5 - 2, D)])  # padded with copies of the last T5 row
    u, sv, vh = torch.linalg.svd(torch.cat([p_rows, n_rows]))  # [pos; neg]
    assert torch.equal(x.s[0], u[:64]) and torch.equal(x.v[0], sv[:64]) and torch.equal(x.d[0], vh[:64])
    assert torch.equal(x.pooled[0], torch.cat([pos.pooled[0], neg.pooled[0]]))
    with pytest.raises(ValueError, match="EMPTY prompt"):
        recipes.sd35_inputs(pos, None, text_dim=D, pooled_dim=P, t5_tokens=t5)


def _sd3_prompt(g, clip_chunks, t5_rows, batch=1):
    """ComfyUI's SD3 layout: clip_chunks × 77 CLIP rows (CLIP-L ‖ CLIP-G, 2048 wide, zero-padded to 4096), T5 rows."""
    clip = torch.nn.functional.pad(torch.randn(batch, 77 * clip_chunks, 2048, generator=g), (0, 2048))
    return PromptFeatures(torch.cat([clip, torch.randn(batch, t5_rows, 4096, generator=g)], dim=1),
                          torch.randn(batch, 2048, generator=g))


def test_sd35_long_clip_prompt_keeps_the_first_clip_chunk_and_the_t5_rows():
    """A prompt over 75 CLIP tokens: ComfyUI gives 2×77 CLIP rows before T5; the official tokenizers truncate CLIP at
    77, so the recipe takes the first 77 CLIP rows and the T5 rows after the second chunk (not CLIP rows as T5)."""
    g = torch.Generator().manual_seed(8)
    long, empty = _sd3_prompt(g, 2, 300), _sd3_prompt(g, 1, 77)
    assert recipes.clip_rows(long.tokens) == 154 and recipes.clip_rows(empty.tokens) == 77
    x = recipes.sd35_inputs(long, empty, dtype=torch.float32)
    p_rows = torch.cat([long.tokens[0, :77], long.tokens[0, 154:154 + 256]])
    n_rows = torch.cat([empty.tokens[0], empty.tokens[0, -1:].expand(256 - 77, 4096)])
    sv = torch.linalg.svdvals(torch.cat([p_rows, n_rows]))
    assert torch.allclose(x.v[0], sv[:64], rtol=1e-5)
    notes = official.OfficialWeakModel.prompt_notes(type("W", (), {"variant": "sd35"})(), long, empty)
    assert len(notes) == 1 and "positive prompt is longer than 75 CLIP tokens" in notes[0]


def _random_t5(d_model=256, layers=4, seed=3):
    import comfy.ops
    from comfy.text_encoders.t5 import T5
    from testkit.tiny_models import init_weights

    cfg = dict(num_layers=layers, d_model=d_model, d_ff=2 * d_model, dense_act_fn="gelu_pytorch_tanh",
               is_gated_act=True, num_heads=4, d_kv=d_model // 4, model_type="t5", vocab_size=1000)
    t5 = T5(cfg, torch.float32, "cpu", comfy.ops.manual_cast)
    init_weights(t5, seed)
    return t5


@pytest.mark.parametrize("prompt_tokens", [5, 20, 60])
def test_sd35_t5_padding_with_copies_of_the_last_row_is_close_to_the_official_pad_outputs(prompt_tokens):
    """Measured with a random-weight T5 (ComfyUI's T5 class): the official encoder gives 256 rows (prompt, EOS, pad
    outputs); ComfyUI gives 77 (min_length). Top-64 singular values of [CLIP; T5] vs the official 256 rows: padding
    with copies of the last row moves them 2% (5 and 20 prompt tokens) to 10% (60), zero rows 41–53% (seed 3, 4 layers,
    width 256; run with -s for the figures)."""
    t5, d = _random_t5(), 256
    g = torch.Generator().manual_seed(prompt_tokens)
    ids = torch.zeros(1, 256, dtype=torch.long)  # T5: no BOS; prompt, EOS (1), pad (0)
    ids[0, :prompt_tokens] = torch.randint(2, 1000, (prompt_tokens,), generator=g)
    ids[0, prompt_tokens] = 1
    with torch.no_grad():
        official_rows, comfy_rows = t5(ids, attention_mask=None)[0][0], t5(ids[:, :77], attention_mask=None)[0][0]
    clip = torch.randn(77, d, generator=g)
    ref = torch.linalg.svdvals(torch.cat([clip, official_rows]))[:64]

    def shift(rows):
        return float((torch.linalg.svdvals(rows)[:64] - ref).norm() / ref.norm())

    copied = recipes._sd35_tokens(torch.cat([clip, comfy_rows])[None], 77, 256)[0]
    zeros = torch.cat([clip, comfy_rows, torch.zeros(256 - 77, d)])
    print(f"T5 padding, {prompt_tokens} prompt tokens: copies {shift(copied):.3f}, zeros {shift(zeros):.3f}")
    assert shift(copied) < 0.15 and shift(copied) < shift(zeros) / 4


def test_recipe_batch_is_per_sample_svd():
    g = torch.Generator().manual_seed(7)
    D, P = 200, 12
    pos = PromptFeatures(torch.randn(3, 81, D, generator=g), torch.randn(3, P, generator=g))
    neg = PromptFeatures(torch.randn(1, 81, D, generator=g), torch.randn(1, P, generator=g))  # broadcast
    x = recipes.sd35_inputs(pos, neg, dtype=torch.float32, text_dim=D, pooled_dim=P, t5_tokens=4)
    one = recipes.sd35_inputs(PromptFeatures(pos.tokens[2:], pos.pooled[2:]), neg, dtype=torch.float32, text_dim=D,
                              pooled_dim=P, t5_tokens=4)
    assert x.batch == 3 and torch.equal(x.s[2], one.s[0]) and torch.equal(x.d[2], one.d[0])


def test_recipe_errors():
    with pytest.raises(ValueError, match=r"\[B, T, 2048\]"):
        recipes.sdxl_inputs(PromptFeatures(torch.zeros(1, 77, 768), torch.zeros(1, 1280)))
    with pytest.raises(ValueError, match="pooled"):
        recipes.sdxl_inputs(PromptFeatures(torch.zeros(1, 77, 2048), None))


# -- WeakModel contract ---------------------------------------------------------------------------------------------
SDXL_TEXT = net.SDXL.scaled(heads=1, hidden=8, lora_rank=2, pos_embed_max_size=16)


@pytest.fixture(scope="module")
def weak_sdxl():
    return official.load_official(random_state_dict(SDXL_TEXT, 9), dtype=torch.float32)


@pytest.fixture(scope="module")
def sdxl_ctx(weak_sdxl):
    g = torch.Generator().manual_seed(11)
    return weak_sdxl.prepare(PromptFeatures(torch.randn(1, 77, 2048, generator=g), torch.randn(1, 1280, generator=g)),
                             None)


def test_weak_model_attributes(weak_sdxl):
    w = weak_sdxl
    assert (w.family, w.latent_channels, w.prediction, w.uses_cfg_scale, w.trained_cfg) == ("sdxl", 4, "eps", False, 5.5)
    w.check_compatible("sdxl", 4, "eps")
    with pytest.raises(ValueError, match="sd3"):
        w.check_compatible("sd3", 16, "flow")
    sd35 = official.load_official(random_state_dict(SMALL["sd35"]), dtype=torch.float32)
    assert (sd35.family, sd35.latent_channels, sd35.prediction, sd35.trained_cfg) == ("sd3", 16, "flow", 3.5)


def test_predict_uses_step_lora_and_prepared_inputs(weak_sdxl, sdxl_ctx):
    w, ctx = weak_sdxl, sdxl_ctx
    g = torch.Generator().manual_seed(12)
    x = ctx.inputs
    assert x.s.shape == (1, 64, 154) and x.pooled.shape == (1, 2560)
    eps = torch.randn(2, 4, 8, 12, generator=g)  # latent batch 2, prompt batch 1
    for i in (0, 22, 49):
        out = w.predict(eps, torch.tensor([3.0, 3.0]), 7.0, StepInfo(i, 50), ctx)
        j = steps.official_lora_index(i, 50, 50)
        lora.set_active_lora(w.net, j)
        with torch.no_grad():
            want = w.net(eps, x.s.expand(2, -1, -1), x.v.expand(2, -1), x.d.expand(2, -1, -1), x.pooled.expand(2, -1))
        assert out.shape == eps.shape and (out - want).abs().max() <= 1e-5 * want.abs().max().clamp_min(1)
    # sigma mode: the LoRA comes from σ, not the step position
    w.lora_index_mode = "sigma"
    try:
        sig = float(steps.sdxl_training_sigmas()[30])
        out = w.predict(eps, torch.tensor([sig, sig]), 7.0, StepInfo(0, 10), ctx)
        lora.set_active_lora(w.net, 30)
        with torch.no_grad():
            want = w.net(eps, x.s.expand(2, -1, -1), x.v.expand(2, -1), x.d.expand(2, -1, -1), x.pooled.expand(2, -1))
        assert (out - want).abs().max() <= 1e-5 * want.abs().max().clamp_min(1)
    finally:
        w.lora_index_mode = "official"
    with pytest.raises(ValueError, match="lora_index_mode"):
        w.lora_index_mode = "nearest"


def test_predict_under_inference_mode_and_dtype_roundtrip(weak_sdxl, sdxl_ctx):
    with torch.inference_mode():
        ctx = type(sdxl_ctx)(sdxl_ctx.inputs)  # fresh per-index cache, created under inference mode
        out = weak_sdxl.predict(torch.randn(1, 4, 8, 8, dtype=torch.float16), torch.tensor([1.0]), 5.0,
                                StepInfo(3, 20), ctx)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_latent_size_errors(weak_sdxl, sdxl_ctx):
    ctx = sdxl_ctx
    calls = []
    weak_sdxl.net.prompt_terms = lambda *a: calls.append(a)  # instance attribute: errors must come before any work
    with pytest.raises(ValueError, match="at most 32×32 latent"):
        weak_sdxl.predict(torch.zeros(1, 4, 34, 8), torch.tensor([1.0]), 5.0, StepInfo(0, 10), ctx)
    with pytest.raises(ValueError, match="even height and width"):
        weak_sdxl.predict(torch.zeros(1, 4, 9, 8), torch.tensor([1.0]), 5.0, StepInfo(0, 10), ctx)
    with pytest.raises(ValueError, match=r"\[B,4,H,W\]"):
        weak_sdxl.predict(torch.zeros(1, 16, 8, 8), torch.tensor([1.0]), 5.0, StepInfo(0, 10), ctx)
    del weak_sdxl.net.prompt_terms
    assert calls == [] and net.SDXL.max_latent == 384


# -- loading errors -------------------------------------------------------------------------------------------------
def test_wrong_key_sets_are_reported(small_sdxl):
    sd = dict(small_sdxl)
    sd.pop("transformer_blocks.2.attn1.to_v.lora.7.B")
    sd["transformer_blocks.0.attn1.to_q.lora.0.C"] = torch.zeros(1)
    with pytest.raises(official.OfficialWeightsError) as e:
        official.load_official(sd)
    msg = str(e.value)
    assert "1 missing" in msg and "transformer_blocks.2.attn1.to_v.lora.7.B" in msg
    assert "1 unexpected" in msg and "lora.0.C" in msg
    sd = dict(small_sdxl)
    sd["trans_linear.linear.weight"] = torch.zeros(3, 3)
    with pytest.raises(official.OfficialWeightsError, match="wrong shape.*trans_linear"):
        official.load_official(sd)
    with pytest.raises(official.OfficialWeightsError, match="not an official CoRe"):
        official.load_official({"model.diffusion_model.x": torch.zeros(1)})
    assert official.is_official_state_dict(["weight", "bias"]) is None


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        official.load_official(tmp_path / "missing.pth")
    bad = tmp_path / "x.ckpt2"
    bad.write_bytes(b"0")
    with pytest.raises(official.OfficialWeightsError, match="unsupported"):
        official.load_official(bad)
    pickled = tmp_path / "evil.pth"
    torch.save({"a": object()}, pickled)
    with pytest.raises(official.OfficialWeightsError, match="weights_only"):
        official.load_official(pickled)


# -- files: .pth and converter --------------------------------------------------------------------------------------
def test_pth_and_safetensors_conversion(tmp_path, small_sdxl):
    from safetensors import safe_open

    src = tmp_path / "sdxl_noise_model.pth"
    torch.save(small_sdxl, src)
    a = official.load_official(src, dtype=torch.float32)
    assert a.source == "sdxl_noise_model.pth"
    dst = tmp_path / "out" / "sdxl.safetensors"
    assert convert.main([str(src), str(dst), "--dtype", "fp32"]) == 0
    with safe_open(str(dst), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(small_sdxl)
    assert meta["format"] == "core2-official" and meta["variant"] == "sdxl"
    assert meta["rank"] == "3" and meta["n_lora"] == "50" and meta["source"] == "sdxl_noise_model.pth"
    assert meta["source_sha256"] == convert.sha256_file(src)
    b = official.load_official(dst, dtype=torch.float32)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    dst16 = tmp_path / "sdxl16.safetensors"
    assert convert.main([str(src), str(dst16)]) == 0  # default bf16
    c = official.load_official(dst16, dtype=torch.bfloat16)
    assert c.net.proj_out.linear.weight.dtype == torch.bfloat16
    # a non-official file is refused before anything is written
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(2)}, bad)
    assert convert.main([str(bad), str(tmp_path / "bad.safetensors")]) == 2
    assert not (tmp_path / "bad.safetensors").exists()


# -- compatibility warnings -----------------------------------------------------------------------------------------
def test_default_dtype_by_device_capability(monkeypatch):
    from comfyui_core2.core2.official import model

    assert model.default_input_dtype("cpu") == torch.float32
    for cap, want in (((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16), ((7, 5), torch.float16), ((6, 1), torch.float16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=cap: c)
        assert model.default_input_dtype("cuda") == want, cap


def test_lora_index_by_sigma_on_a_shortened_schedule(weak_sdxl):
    """denoise < 1: the schedule starts below full noise, so "official" picks the LoRA by σ, not by the fraction of
    the shortened schedule (which would hand step 0 at σ ≈ 1 the LoRA trained for full noise)."""
    grid = steps.sdxl_training_sigmas()
    sched = grid[25:].clone()  # the tail of the training schedule, as denoise 0.5 gives
    assert weak_sdxl.lora_index(StepInfo(0, 25, sched), sched[0]) == 0  # full-schedule rule: fraction 0
    assert weak_sdxl.lora_index(StepInfo(0, 25, sched, denoise=0.5), sched[0]) == 25
    assert weak_sdxl.lora_index(StepInfo(10, 25, sched, denoise=0.5), sched[10]) == 35


def test_sdxl_zero_negative_note(weak_sdxl):
    pos = PromptFeatures(torch.randn(1, 77, 2048), torch.randn(1, 1280))
    zero = PromptFeatures(torch.zeros(1, 77, 2048), torch.zeros(1, 1280))
    assert weak_sdxl.prompt_notes(pos, zero) == [] and weak_sdxl.prompt_notes(pos, None) == []
    (note,) = weak_sdxl.prompt_notes(pos, PromptFeatures(torch.randn(1, 77, 2048), torch.randn(1, 1280)))
    assert "all-zero negative" in note and "ConditioningZeroOut" in note


def test_compatibility_warnings(weak_sdxl):
    assert official.compatibility_warnings(weak_sdxl, 5.5, 50, "ddim_uniform") == []
    w = official.compatibility_warnings(weak_sdxl, 8.0, 20, "karras")
    assert len(w) == 3 and "5.5" in w[0] and "50" in w[1] and "karras" in w[2]
    sd35 = official.load_official(random_state_dict(SMALL["sd35"]), dtype=torch.float32)
    assert official.compatibility_warnings(sd35, 3.5, 28, "simple") == []
    assert len(official.compatibility_warnings(sd35, 4.5, 30, "simple")) == 2
    assert official.compatibility_warnings(object(), 1.0, 1, "x") == []


def test_core2_official_does_not_import_comfy_or_diffusers():
    for f in (ROOT / "core2" / "official").glob("*.py"):
        src = f.read_text()
        assert not re.search(r"^\s*(import|from)\s+(comfy|diffusers|folder_paths|nodes)\b", src, re.M), f.name
