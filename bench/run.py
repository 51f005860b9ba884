"""The CoRe² benchmark: quality against model passes on the toy world, and step speed at SD1.5 / SDXL size.

    python -m bench.run              # about 55 minutes on 1 CPU thread the first time; writes bench/results/*.json + a table
    python -m bench.run --quick      # a small version (a few minutes)
    python -m bench.run --skip-speed # quality only

Quality (bench/results/quality.json): held-out (prompt, seed) samples of the toy world (seeds never collected), each
method on the same noise. Attribute accuracy from the shipped toy classifier, and a Fréchet distance in that
classifier's 128-d penultimate features against real procedural pictures (toy/data.py) of the same prompts. The weak
model is collected and trained by the demo's code in bench_out/ (16 seeds per prompt, 8000 training steps; resumable,
reused by later runs).

Speed (bench/results/speed.json): ComfyUI's UNetModel built from the SD15 and SDXL configs found in the active
ComfyUI's comfy/model_detection.py, random weights, fp32, one small latent; median wall time of a CFG step (cond +
uncond batched, as ComfyUI runs it) and of a fast step (cond pass + our weak model); plus the Collect overhead
(bench/collect_overhead.py).
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
log = logging.getLogger("core2.bench")


# ---------------------------------------------------------------------------------------------------------------
# quality


def lean_slow(n: int) -> int:
    """Slow steps for the 'lean' CoRe² row: the most that keep its passes n + k within 0.6 × CFG's 2n, i.e.
    k = ⌊0.2·n⌋ (0 below n = 5, where one slow step would already cost more)."""
    return (2 * n) // 10


def equal_pass_mixed(n: int) -> tuple[int, int]:
    """(steps, slow steps) of the mixed CoRe² row that spends exactly n passes, like CFG at n/2 steps: about a
    fifth of the passes go to slow steps (k = max(1, round(n/5)), steps = n − k)."""
    k = max(1, round(n / 5))
    return n - k, k


def equal_pass_heavy(n: int) -> tuple[int, int] | None:
    """(steps, slow steps) of the slow-heavy CoRe² row at exactly n passes: twice the mixed row's slow steps
    (n − 2k steps, 2k slow), where fast steps still outnumber slow ones; else None."""
    k = 2 * max(1, round(n / 5))
    return (n - k, k) if n - k > k else None


SCALE_SWEEP = (1.0, 2.0, 3.0, 5.0, 7.0, 9.0)


def headroom_methods(n: int, cfg: float, sweep: tuple = SCALE_SWEEP) -> list[tuple[int, object]]:
    """Rows that show whether a world has headroom (the scenes world's targets): CFG at 2n steps, and a cfg sweep
    at n steps (the sweep's value equal to `cfg` is the budget's own CFG row, and cfg 1 is the no-guidance row)."""
    from demo.pipeline import Method

    rows = [(n, Method(f"CFG, {2 * n} steps", "cfg", cfg, 2 * n, note="steps headroom", role="cfg-double"))]
    rows += [(n, Method(f"CFG {c:g}, {n} steps", "cfg", c, n, note="cfg sweep", role=f"cfg-sweep {c:g}"))
             for c in sweep if c not in (1.0, cfg)]
    return rows


def half_sweep_methods(budgets: list[int], cfg: float, sweep: tuple = SCALE_SWEEP) -> list[tuple[int, object]]:
    """CFG at n/2 steps (n passes) at the sweep's other scales, per budget n. Where the best scale depends on the step
    count, CFG with half the steps at its own best scale is CoRe²'s fair peer at equal passes (quality_checks
    compares with the best of them)."""
    from demo.pipeline import Method

    return [(n, Method(f"CFG {c:g}, {n // 2} steps", "cfg", c, n // 2, note="cfg sweep, n passes",
                       role=f"cfg-half-sweep {c:g}")) for n in sorted(budgets) for c in sweep if c not in (1.0, cfg)]


def _plans(n: int) -> list[tuple[str, int, int]]:
    """(plan, steps, slow steps) of budget n's CoRe² rows with slow steps: mixed and heavy (n passes), lean (≤ 0.6×)."""
    m_steps, m_slow = equal_pass_mixed(n)
    heavy = equal_pass_heavy(n)
    return ([("mixed", m_steps, m_slow)] + ([("heavy", *heavy)] if heavy else [])
            + ([("lean", n, lean_slow(n))] if lean_slow(n) else []))


def fillin_methods(n: int, cfg: float) -> list:
    """The training-free fill-ins at the passes of budget n's mixed and lean CoRe² rows (same steps, same slow
    steps; slow steps plain CFG): scheduled CFG (cond only after the slow steps) and CFG reuse."""
    from demo.pipeline import FILL_KINDS, Method

    return [Method(f"{kind}, {steps} steps, {slow} slow", kind, cfg, steps, slow, 1.0, note="training-free",
                   role=f"{kind} {plan}") for plan, steps, slow in _plans(n) for kind in FILL_KINDS]


def perfect_weak_methods(n: int, cfg: float) -> list:
    """CFG at the step counts of budget n's CoRe² rows with slow steps, where no other row of the budget has them:
    what those rows would score with a perfect weak model (w2s 1, every fast step = CFG), i.e. the most any weak
    model, trained or training-free, can reach at those steps (ceiling_checks)."""
    from demo.pipeline import Method

    steps = sorted({s for _, s, _ in _plans(n)} - {n, n // 2})
    return [Method(f"CFG, {s} steps", "cfg", cfg, s, note="= a perfect weak model", role=f"cfg-steps {s}")
            for s in steps]


def placement_methods(n: int, cfg: float, w2s: float) -> list:
    """The mixed and lean CoRe² rows of budget n and the CFG-reuse fill-in at their passes, with their slow steps
    spread over the run instead of first, and front (half first, the rest spread), only where that picks other steps
    than first (core2/schedule.py slow_step_set: spread from 2 slow steps on, front from 4)."""
    from comfyui_core2.core2.schedule import slow_step_set
    from demo.pipeline import Method

    rows = []
    for placement in ("spread", "front"):
        for plan, steps, slow in _plans(n):
            if slow_step_set(steps, slow, placement) == slow_step_set(steps, slow, "first"):
                continue
            rows += [Method(f"CoRe², {steps} steps, {slow} slow {placement}", "core2", cfg, steps, slow, w2s,
                            note=f"slow steps {placement}", role=f"{plan} {placement}", placement=placement),
                     Method(f"cfg-reuse, {steps} steps, {slow} slow {placement}", "cfg-reuse", cfg, steps, slow,
                            1.0, note=f"training-free, slow steps {placement}", role=f"cfg-reuse {plan} {placement}",
                            placement=placement)]
    return rows


def quality_methods(budgets: list[int], cfg: float, w2s: float, zigzag: bool) -> list[tuple[int, object]]:
    """(budget n, Method) rows per step count n: CFG at n and at n/2 steps; CoRe² all-fast at n steps and mixed
    at n passes (both equal passes to CFG at n/2 steps); CoRe² lean (≤ 0.6× CFG's passes), half-slow and all-slow
    at n steps; cfg = 1 and (optionally) the zigzag rows at the largest n only. Each Method's role names what it
    stands for ("cfg", "cfg-half", "all-fast", "mixed", "lean", ...): the checks find rows by (budget, role), never by
    their display names."""
    from demo.pipeline import Method

    rows = []
    for n in sorted(budgets):
        k = lean_slow(n)
        m_steps, m_slow = equal_pass_mixed(n)
        rows += [(n, Method(f"CFG, {n} steps", "cfg", cfg, n, role="cfg")),
                 (n, Method(f"CFG, {n // 2} steps", "cfg", cfg, n // 2, note="n passes", role="cfg-half")),
                 (n, Method(f"CoRe², {n} steps, all-fast", "core2", cfg, n, 0, 1.0, note="n passes", role="all-fast")),
                 (n, Method(f"CoRe², {m_steps} steps, {m_slow} slow", "core2", cfg, m_steps, m_slow, w2s,
                            note="n passes", role="mixed"))]
        heavy = equal_pass_heavy(n)
        if heavy:
            rows.append((n, Method(f"CoRe², {heavy[0]} steps, {heavy[1]} slow", "core2", cfg, *heavy, w2s,
                                   note="n passes", role="heavy")))
        if k:
            rows.append((n, Method(f"CoRe², {n} steps, {k} slow", "core2", cfg, n, k, w2s, note="≤ 0.6× CFG's passes",
                                   role="lean")))
        rows += [(n, m) for m in fillin_methods(n, cfg)]
        rows += [(n, m) for m in perfect_weak_methods(n, cfg)]
        rows += [(n, m) for m in placement_methods(n, cfg, w2s)]
        rows += [(n, Method(f"CoRe², {n} steps, {n // 2} slow", "core2", cfg, n, n // 2, w2s, role="half-slow")),
                 (n, Method(f"CoRe², {n} steps, all-slow", "core2", cfg, n, n, w2s, role="all-slow"))]
    n = max(budgets)
    rows.insert(0, (n, Method(f"cfg 1, {n} steps", "cfg", 1.0, n, note="no guidance", role="cfg1")))
    if zigzag:
        rows += [(n, Method(f"Z-Sampling, {n} steps", "core2", cfg, n, n, w2s, "z-sampling", note="euler, inv_cfg 0.5",
                            role="z-sampling")),
                 (n, Method(f"Z-CoRe², {n} steps", "core2", cfg, n, n, w2s, "z-core", note="euler", role="z-core"))]
    return rows


def by_role(rows: list[dict]) -> dict[tuple[int, str], dict]:
    """The measured rows by (budget, role): how the checks find the rows they compare."""
    return {(r["budget"], r["role"]): r for r in rows}


def _sampling_key(m) -> tuple:
    """What sampling a Method does (two rows with the same key are the same samples)."""
    return m.kind, m.cfg, m.steps, m.slow_steps, m.w2s_scale, m.method, m.placement


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), in float64."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(ca)
    sa = (v * w.clamp_min(0).sqrt()) @ v.T
    m = sa @ cb @ sa
    ev = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0)
    return float((mu_a - mu_b).pow(2).sum() + ca.trace() + cb.trace() - 2 * ev.sqrt().sum())


BENCH_DEFAULTS = {"seeds_per_prompt": 16, "train_steps": 8000, "size": "small"}


def bench_config(args):
    """The demo's pipeline and settings, with more collected seeds and training steps (BENCH_DEFAULTS) and its own
    dataset / model names (in --work, default bench_out/)."""
    from demo.pipeline import DemoConfig

    from comfyui_core2.toy import world

    spec = world.spec(args.world)
    prefix = "toy" if args.world == "shapes" else args.world
    dcfg = DemoConfig(dataset_name=f"{prefix}_bench", model_name=f"{prefix}_bench", world=args.world,
                      sampler_name=spec.defaults["sampler_name"], scheduler=spec.defaults["scheduler"],
                      cfg=spec.defaults["cfg"], **BENCH_DEFAULTS)
    for k in ("seeds_per_prompt", "train_steps", "size", "prompts", "memory"):
        v = getattr(args, k, None)
        if v is not None:
            setattr(dcfg, k, v)
    if args.quick:
        dcfg.seeds_per_prompt = min(dcfg.seeds_per_prompt, 2)
    dcfg.model_name = f"{prefix}_bench_{dcfg.size}" + ("" if dcfg.memory else "_nomemory")
    return dcfg


def diff_se(a: dict, b: dict) -> float:
    """The standard error of accuracy(a) − accuracy(b). Rows measured on the same prompts and noise seeds carry
    per-picture scores ("picture_scores", also kept in the result file): the paired standard error of the
    per-picture differences. Otherwise (rows of other runs) the rows' own standard errors combined as if independent."""
    sa, sb = a.get("picture_scores"), b.get("picture_scores")
    if sa is not None and sb is not None and len(sa) == len(sb):
        from comfyui_core2.toy.judge import mean_se

        return mean_se(torch.as_tensor(sa, dtype=torch.float64) - torch.as_tensor(sb, dtype=torch.float64))
    return math.sqrt(a["accuracy_se"] ** 2 + b["accuracy_se"] ** 2)


def in_se(a: dict, b: dict) -> float:
    """accuracy(a) − accuracy(b) in standard errors of that difference."""
    return round((a["accuracy"]["mean"] - b["accuracy"]["mean"]) / (diff_se(a, b) or 1e-9), 2)


def run_quality(args, env: dict) -> dict:
    from demo import pipeline

    from comfyui_core2.toy.judge import judge

    dcfg = bench_config(args)
    j = judge(args.world)
    t0 = time.perf_counter()
    dataset = pipeline.collect(args.work, dcfg)
    weak, training = pipeline.train(args.work, dcfg, dataset["folder"])
    prep = time.perf_counter() - t0
    model = pipeline.world_model(args.world)
    cfg = args.cfg or dcfg.cfg  # the rows' guidance scale (the weak model predicts the unconditional output: any scale)
    planned = quality_methods(args.budgets, cfg, dcfg.w2s_scale, args.zigzag)
    if args.headroom:
        planned += headroom_methods(max(args.budgets), cfg)
    if args.scale_sweep:
        planned += half_sweep_methods(args.budgets, cfg)
    unique = {_sampling_key(m): m for _, m in planned}  # a row shared by two budgets is sampled once
    done = dict(zip(unique, pipeline.evaluate(model, list(unique.values()), weak, args.samples, args.seed,
                                              batch=args.batch, keep_pictures=True, world_name=args.world)))
    rows = [dict(done[_sampling_key(m)]) for _, m in planned]
    labels = rows[0]["_labels"]
    f_real = j.features(j.real_pictures(labels, 12345))
    floor = frechet_distance(j.features(j.real_pictures(labels, 54321)), f_real)
    for (budget, m), r in zip(planned, rows):
        r["fd"] = round(frechet_distance(j.features(r.pop("_images")), f_real), 3)
        r.pop("_labels")
        r["picture_scores"] = [round(v, 4) for v in r.pop("_scores").tolist()]  # share of attributes right
        r["budget"], r["role"] = budget, m.role
        r["passes_vs_cfg"] = round(r["passes_per_image"] / (2 * budget), 3)  # CFG at the row's step count = 1.0
    res = {"format": "core2-bench-quality", "version": 3, "world": args.world, "environment": env,
           "setup": {"samples": args.samples, "seed": args.seed, "budgets": sorted(args.budgets), "cfg": cfg,
                     "collected_at_cfg": dcfg.cfg,
                     "sampler": dcfg.sampler_name, "scheduler": dcfg.scheduler, "w2s_scale": dcfg.w2s_scale,
                     "fields": list(j.fields),
                     "collected": f"{dcfg.prompts} prompts × {dcfg.seeds_per_prompt} seeds (own noise per trajectory)",
                     "evaluation_seeds": f"{args.seed}… (never collected)",
                     "fd_features": j.reader,
                     "fd_reference": "procedural pictures of the same prompts",
                     "fd_real_vs_real": round(floor, 3), "prep_seconds": round(prep, 1)},
           "dataset": dataset, "training": training, "methods": rows}
    res["checks"] = quality_checks(rows, sorted(args.budgets))
    res["fillin_checks"] = fillin_checks(rows)
    res["ceiling_checks"] = ceiling_checks(rows)
    if args.headroom:
        res["headroom"] = headroom_checks(rows, max(args.budgets), cfg)
    return res


def fillin_checks(rows: list[dict]) -> dict:
    """Each trained CoRe² row against the training-free fill-ins at the same steps and slow steps: the accuracy
    difference in standard errors of the difference (paired where the rows share pictures; target: ≥ 3 against both)."""
    out = {}
    for r in rows:
        if r["kind"] != "core2" or r["method"] != "core":
            continue
        same = [f for f in rows if f["kind"] not in ("cfg", "core2") and f["steps"] == r["steps"]
                and f["slow_steps"] == r["slow_steps"] and f.get("placement", "first") == r.get("placement", "first")]
        if not same:
            continue
        out[r["name"]] = {f["kind"]: in_se(r, f) for f in same}
    return out


def ceiling_checks(rows: list[dict]) -> dict:
    """Per trained CoRe² row with fill-in rows at its steps: CFG at the row's own step count and scale, which a
    perfect weak model reproduces (w2s 1), against the row and against each fill-in, in standard errors of the
    difference. Where a fill-in is already within a few SE of it, no weak model can beat that fill-in by more."""
    out = {}
    for r in rows:
        if r["kind"] != "core2" or r["method"] != "core":
            continue
        fills = [f for f in rows if f["kind"] not in ("cfg", "core2") and f["steps"] == r["steps"]
                 and f["slow_steps"] == r["slow_steps"] and f.get("placement", "first") == r.get("placement", "first")]
        top = next((c for c in rows if c["kind"] == "cfg" and c["steps"] == r["steps"] and c["cfg"] == r["cfg"]), None)
        if fills and top is not None:
            out[r["name"]] = {"cfg": top["name"], "cfg_accuracy": top["accuracy"]["mean"], "row_vs_cfg_in_se": in_se(r, top),
                              "cfg_vs_fillin_in_se": {f["kind"]: in_se(top, f) for f in fills}}
    return out


def headroom_checks(rows: list[dict], n: int, cfg: float) -> dict:
    """The harder world's targets, from the measured rows: CFG at n steps in 0.70–0.92 accuracy; steps matter
    (n/2 worse than n by ≥ 2 SE of the difference, n worse than 2n by ≥ 1 SE); cfg 1 ≥ 0.2 below CFG; the cfg sweep
    peaks at an interior scale; all-slow CoRe² vs CFG at n steps (in SE of the difference)."""
    by = by_role(rows)
    acc = lambda role: by[n, role]["accuracy"]["mean"] if (n, role) in by else None  # noqa: E731
    cfg_n, half, double = acc("cfg"), acc("cfg-half"), acc("cfg-double")
    sweep = {1.0: acc("cfg1"), cfg: cfg_n}
    sweep.update({r["cfg"]: r["accuracy"]["mean"] for r in rows if r["role"].startswith("cfg-sweep")})
    sweep = {k: v for k, v in sorted(sweep.items()) if v is not None}
    best = max(sweep, key=sweep.get) if sweep else None
    out = {"cfg_accuracy": cfg_n, "cfg_in_0.70_0.92": cfg_n is not None and 0.70 <= cfg_n <= 0.92,
           "cfg_sweep": sweep, "best_cfg": best,
           "best_cfg_interior": best is not None and min(sweep) < best < max(sweep)}
    if cfg_n is not None and half is not None:
        out["steps_half_vs_n_in_se"] = in_se(by[n, "cfg"], by[n, "cfg-half"])
    if cfg_n is not None and double is not None:
        out["steps_n_vs_double_in_se"] = in_se(by[n, "cfg-double"], by[n, "cfg"])
    if cfg_n is not None and sweep.get(1.0) is not None:
        out["cfg1_gap"] = round(cfg_n - sweep[1.0], 4)
    if cfg_n is not None and acc("all-slow") is not None:
        out["all_slow_vs_cfg_in_se"] = in_se(by[n, "all-slow"], by[n, "cfg"])
    return out


def quality_checks(rows: list[dict], budgets: list[int]) -> dict:
    """The headline claims per step count n, answered from the measured rows (whatever came out).

    equal passes: the CoRe² rows that spend n passes (all-fast at n steps; mixed at n − k steps with k slow) vs CFG
    at n/2 steps (also n passes); CoRe² is better when either row beats CFG, and the check names which; each
    candidate's accuracy difference is also given in standard errors of the difference (paired where measured).
    0.6×: every CoRe² row of budget n with ≤ 0.6 × 2n passes vs CFG at n steps; 'matches' = accuracy no lower than
    CFG's by more than two standard errors of the difference, and FD no higher than CFG's FD at n/2 steps (the
    cheaper CFG)."""
    by = by_role(rows)
    out = {}
    for n in budgets:
        full, half = by.get((n, "cfg")), by.get((n, "cfg-half"))
        mine = [r for r in rows if r["kind"] == "core2" and r.get("budget") == n and r["method"] == "core"]
        c = {}
        same = [r for r in mine if abs(r["passes_per_image"] - n) < 1e-9]
        halves = [half] + [r for r in rows if r.get("budget") == n and r["role"].startswith("cfg-half-sweep")]
        best = max(halves, key=lambda r: r["accuracy"]["mean"]) if half else None
        if half and same:
            c["equal_passes"] = {
                "cfg": half["name"], "passes": n, "cfg_accuracy": half["accuracy"]["mean"], "cfg_fd": half["fd"],
                "candidates": {r["name"]: {"accuracy": r["accuracy"]["mean"], "fd": r["fd"], "vs_cfg_in_se": in_se(r, half)}
                               for r in same},
                "better_accuracy": [r["name"] for r in same if r["accuracy"]["mean"] > half["accuracy"]["mean"]],
                "better_fd": [r["name"] for r in same if r["fd"] < half["fd"]]}
            if best is not half:  # a cfg sweep at n/2 steps found a better scale than the budget's
                c["equal_passes"]["best_cfg"] = {"name": best["name"], "cfg_scale": best["cfg"],
                                                 "accuracy": best["accuracy"]["mean"], "fd": best["fd"],
                                                 "vs_best_in_se": {r["name"]: in_se(r, best) for r in same}}
        if full:
            cheap = [r for r in mine if r["passes_per_image"] <= 1.2 * n + 1e-9]
            tol = {r["name"]: round(2 * diff_se(r, full), 4) for r in cheap}
            ok = [r["name"] for r in cheap if r["accuracy"]["mean"] >= full["accuracy"]["mean"] - tol[r["name"]]
                  and (half is None or r["fd"] <= half["fd"])]
            c["matches_cfg_at_0.6x_passes"] = {
                "cfg": full["name"], "cfg_accuracy": full["accuracy"]["mean"], "cfg_fd": full["fd"],
                "candidates": {r["name"]: {"passes": r["passes_per_image"], "accuracy": r["accuracy"]["mean"],
                                           "fd": r["fd"], "accuracy_tolerance": tol[r["name"]]} for r in cheap},
                "met_by": ok}
        out[str(n)] = c
    return out


def quality_table(res: dict) -> str:
    s, t = res["setup"], res["training"]
    fields = s.get("fields", ["shape", "colour", "position"])
    world = res.get("world", "shapes")
    paired = all("picture_scores" in r for r in res["methods"])  # older files: binomial SEs, unpaired checks
    lines = [f"Toy world '{world}', {s['samples']} held-out (prompt, seed) samples per row (seeds never collected), "
             f"{s.get('sampler', 'euler')}/{s.get('scheduler', 'normal')}, cfg {s['cfg']:g}, w2s {s['w2s_scale']:g}. Accuracy: the mean over the "
             f"{len(fields)} attributes read back by the {s.get('fd_features', 'toy classifier')} (± one standard error"
             + (" over pictures" if paired else "") + f" ≤ {max(r['accuracy_se'] for r in res['methods']):.3f}"
             + ("; every row samples the same prompts and noise seeds, so the checks below judge differences in "
                "paired standard errors" if paired else "") + "); all: every attribute right. FD: "
             f"Fréchet distance in those features to real pictures of the same prompts (real vs real "
             f"{s['fd_real_vs_real']:.1f}). × CFG: passes over CFG's at the row's step budget. Weak model: "
             f"{t['size']}, {t.get('steps')} training steps ({t.get('loss', 'relative')} loss) on {s['collected']}"
             + (f" collected at cfg {s['collected_at_cfg']:g}" if s.get("collected_at_cfg", s["cfg"]) != s["cfg"] else "")
             + ", "
             f"held-out relative error {t['val_rel_err']:.3f}" + (f", in x0 space {t['val_rel_err_x0']:.3f}"
                                                                   if t.get("val_rel_err_x0") is not None else "")
             + f" ({t.get('validation_on')}).", "",
             "| budget | method | passes / image | × CFG | accuracy | all | " + " | ".join(fields) + " | FD ↓ | s / image |",
             "| ---: | --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in fields) + " | ---: | ---: |"]
    for r in res["methods"]:
        a = r["accuracy"]
        all_ok = a.get("all", a.get("all_three"))
        all_ok = "–" if all_ok is None else f"{all_ok:.3f}"
        lines.append(f"| {r['budget']} | {r['name']} | {r['passes_per_image']:g} | {r['passes_vs_cfg']:.2f} | "
                     f"**{a['mean']:.3f}** | {all_ok} | " + " | ".join(f"{a[f]:.3f}" for f in fields) +
                     f" | {r['fd']:.1f} | {r['seconds'] / s['samples']:.3f} |")
    h = res.get("headroom")
    if h:
        lines += ["", "Headroom (targets of the harder world): " + json.dumps(h)]
    lines += ["", "Headline checks (per step budget n; `bench/results/quality.json` → checks):", ""]
    for n, c in res.get("checks", {}).items():
        e = c.get("equal_passes")
        if e:
            cand = "; ".join(f"{k} {v['accuracy']:.3f}" + (f" ({v['vs_cfg_in_se']:+.1f} SE)" if "vs_cfg_in_se" in v
                                                            else "") + f" / FD {v['fd']:.1f}"
                             for k, v in e["candidates"].items())
            lines.append(f"- n = {n}, equal passes ({e['passes']:g}): {e['cfg']} {e['cfg_accuracy']:.3f} / FD "
                         f"{e['cfg_fd']:.1f} vs {cand} → CoRe² better on accuracy: "
                         f"{', '.join(e['better_accuracy']) or 'no'}; on FD: {', '.join(e['better_fd']) or 'no'}.")
            b = e.get("best_cfg")
            if b:
                vs = "; ".join(f"{k} {v:+.1f} SE" for k, v in b["vs_best_in_se"].items())
                lines.append(f"- n = {n}, equal passes, against CFG at its best scale in the sweep: {b['name']} "
                             f"{b['accuracy']:.3f} / FD {b['fd']:.1f}: {vs}.")
        m = c.get("matches_cfg_at_0.6x_passes")
        if m:
            tol = max((v.get("accuracy_tolerance", m.get("accuracy_tolerance", 0.0)) for v in m["candidates"].values()),
                      default=0.0)
            lines.append(f"- n = {n}, ≤ 0.6× passes: {', '.join(m['met_by']) or 'no CoRe² row'} matches {m['cfg']} "
                         f"(accuracy {m['cfg_accuracy']:.3f}, within two standard errors of the difference (≤ {tol:.3f}), "
                         f"FD no worse than CFG at n/2 steps).")
    return "\n".join(lines + fillin_lines(res))


def fillin_lines(res: dict) -> list[str]:
    """The table's lines for fillin_checks and ceiling_checks (none for files written before them)."""
    fills, tops = res.get("fillin_checks") or {}, res.get("ceiling_checks") or {}
    if not fills:
        return []
    lines = ["", "Trained weak model against the training-free fill-ins at the same steps and slow steps, in standard "
             "errors of the difference (target ≥ 3); beside it, CFG at the row's own steps, which is what a perfect "
             "weak model gives (w2s 1): a fill-in close to it leaves no weak model room to win by much.", ""]
    for name, v in fills.items():
        text = "; ".join(f"vs {k} {x:+.1f} SE" for k, x in v.items())
        c = tops.get(name)
        if c:
            text += (f"; {c['cfg']} {c['cfg_accuracy']:.3f} (this row {c['row_vs_cfg_in_se']:+.1f} SE from it; it is "
                     + ", ".join(f"{x:+.1f} SE from {k}" for k, x in c["cfg_vs_fillin_in_se"].items()) + ")")
        lines.append(f"- {name}: {text}.")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# speed


def unet_configs() -> dict[str, dict]:
    """The SD15 and SDXL UNet configs as written in the active ComfyUI's comfy/model_detection.py (read, not copied;
    without their 'dtype' entry). The one source of these configs for bench/ (run, weak_cost, gpu_check)."""
    import comfy.model_detection

    tree = ast.parse(Path(comfy.model_detection.__file__).read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("SD15", "SDXL") and isinstance(node.value, ast.Dict):
            d = {}
            for k, v in zip(node.value.keys, node.value.values):
                try:
                    d[ast.literal_eval(k)] = ast.literal_eval(v)
                except ValueError:  # e.g. 'dtype': dtype
                    continue
            found.setdefault(node.targets[0].id, d)
    missing = {"SD15", "SDXL"} - set(found)
    if missing:
        raise RuntimeError(f"no {', '.join(sorted(missing))} UNet config found in {comfy.model_detection.__file__}")
    return found


FAMILY = {"SD15": {"token_dim": 768, "pooled_dim": None, "tokens": 77, "family": "sd15"},
          "SDXL": {"token_dim": 2048, "pooled_dim": 1280, "tokens": 77, "family": "sdxl"}}


def _median_time(fn, reps: int) -> tuple[float, list[float]]:
    with torch.no_grad():
        fn()  # warm-up
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts


def time_family(name: str, cfg: dict, hw: int, reps: int, sizes: list[str]) -> dict:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from comfyui_core2.core2 import arch
    from comfyui_core2.core2.weak import PromptFeatures, StepInfo

    fam = FAMILY[name]
    torch.manual_seed(0)
    unet = UNetModel(**cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02)
    n_params = sum(p.numel() for p in unet.parameters())
    c = cfg.get("in_channels", 4)

    def inputs(b):
        x = torch.randn(b, c, hw, hw)
        t = torch.full((b,), 500.0)
        ctx = torch.randn(b, fam["tokens"], fam["token_dim"])
        y = torch.randn(b, cfg["adm_in_channels"]) if cfg.get("adm_in_channels") else None
        return x, t, ctx, y

    x1, t1, c1, y1 = inputs(1)
    x2, t2, c2, y2 = inputs(2)
    cond_pass = lambda: unet(x1, t1, context=c1, y=y1)  # noqa: E731
    cfg_step = lambda: unet(x2, t2, context=c2, y=y2)  # noqa: E731  (ComfyUI batches cond + uncond)
    weak_times = {}
    for size in sizes:
        w = arch.build(arch.make_config(size, c, fam["token_dim"], fam["pooled_dim"], family=fam["family"],
                                        prediction="eps", x_input=True, memory=True)).eval()  # as Reflect trains it
        with torch.no_grad():
            w.head.weight.normal_(0, 0.01)
        pf = lambda: PromptFeatures(torch.randn(1, fam["tokens"], fam["token_dim"]),  # noqa: E731
                                    torch.randn(1, fam["pooled_dim"]) if fam["pooled_dim"] else None)
        with torch.no_grad():
            ctx = w.prepare(pf(), pf())
        rc, sigma, xt = torch.randn(1, c, hw, hw), torch.tensor([3.0]), torch.randn(1, c, hw, hw) * 3
        info = StepInfo(0, 20, extra={"x": xt})
        weak_times[size] = _median_time(lambda: w.predict(rc, sigma, 5.0, info, ctx), max(reps, 5))[0]
        weak_times[size + "_params"] = sum(p.numel() for p in w.parameters())
    # alternate the two so that machine load hits both alike
    t_cond, t_cfg = [], []
    with torch.no_grad():
        cond_pass()
        cfg_step()
        for r in range(reps):
            for fn, acc in ((cond_pass, t_cond), (cfg_step, t_cfg)) if r % 2 == 0 else ((cfg_step, t_cfg), (cond_pass, t_cond)):
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
    del unet
    mc, mf = statistics.median(t_cond), statistics.median(t_cfg)
    out = {"unet_parameters": n_params, "latent": [c, hw, hw], "reps": reps, "cond_pass_s": round(mc, 4),
           "cfg_step_s": round(mf, 4), "cond_pass_times": [round(v, 4) for v in t_cond],
           "cfg_step_times": [round(v, 4) for v in t_cfg], "weak": {}}
    for size in sizes:
        tw = weak_times[size]
        out["weak"][size] = {"parameters": weak_times[size + "_params"], "seconds": round(tw, 5),
                             "pct_of_base_call": round(100 * tw / mc, 3),
                             "fast_step_s": round(mc + tw, 4),
                             "fast_over_cfg_step": round((mc + tw) / mf, 3)}
    log.info("%s at %dx%d: cond pass %.3f s, CFG step %.3f s; %s", name, hw, hw, mc, mf,
             ", ".join(f"{s}: weak {100 * weak_times[s] / mc:.2f}%, fast/CFG {(mc + weak_times[s]) / mf:.3f}" for s in sizes))
    return out


def collect_overhead(reps: int, timeout: int = 600) -> dict:
    """bench/collect_overhead.py in a fresh process (its own ComfyUI state); the cases come back as JSON."""
    args = ["--reps", str(reps), "--threads", "1", "--case", "sd15-32"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "collect_overhead.json"
        cmd = [sys.executable, str(ROOT / "bench" / "collect_overhead.py"), *args, "--json", str(out)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"bench/collect_overhead.py took longer than {timeout} s (a busy machine?); run it alone"}
        if p.returncode or not out.is_file():
            return {"error": p.stderr[-2000:] or f"bench/collect_overhead.py wrote no {out.name}"}
        cases = {name: {k: c[k] for k in ("plain_s", "recorded_s", "overhead_pct")}
                 for name, c in json.loads(out.read_text(encoding="utf-8"))["cases"].items()}
    return {"command": " ".join(["python", "bench/collect_overhead.py", *args]), "reps": reps, "cases": cases,
            "output": p.stdout}


def run_speed(args, env: dict) -> dict:
    cfgs = unet_configs()
    fams = {}
    for name, hw in (("SD15", args.hw), ("SDXL", args.hw)):
        fams[name] = time_family(name, cfgs[name], hw, args.reps, ["small", "medium"])
    res = {"format": "core2-bench-speed", "version": 1, "environment": env,
           "setup": {"precision": "fp32", "weights": "random (normal 0.02)", "latent_hw": args.hw,
                     "cfg_step": "one UNet call on batch 2 (cond + uncond), as ComfyUI batches them",
                     "fast_step": "one UNet call on batch 1 (cond) + one weak-model call",
                     "configs_from": "comfy/model_detection.py (SD15, SDXL)"},
           "families": fams}
    if not args.skip_collect:
        res["collect_overhead"] = collect_overhead(args.collect_reps)
    return res


def speed_table(res: dict) -> str:
    s = res["setup"]
    lines = [f"ComfyUI UNetModel with the real SD1.5 / SDXL configs, random weights, {s['precision']}, latent "
             f"{s['latent_hw']}×{s['latent_hw']}, {res['environment']['device']}, torch {res['environment']['torch']}, "
             f"{res['environment']['threads']} thread(s); medians of {next(iter(res['families'].values()))['reps']} runs.",
             "", "| UNet | cond pass s | CFG step s | weak | weak params | weak % of a base call | fast step / CFG step |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for name, f in res["families"].items():
        for size, w in f["weak"].items():
            lines.append(f"| {name} ({f['unet_parameters'] / 1e6:.0f} M) | {f['cond_pass_s']:.3f} | {f['cfg_step_s']:.3f} | "
                         f"{size} | {w['parameters'] / 1e6:.2f} M | {w['pct_of_base_call']:.2f}% | "
                         f"**{w['fast_over_cfg_step']:.3f}** |")
    co = res.get("collect_overhead", {}).get("cases")
    if co:
        lines += ["", "Collect overhead (tiny SD1.5, 20 steps, recorded vs plain sampling): " + "; ".join(
            f"{k}: {v['overhead_pct']:+.1f}%" for k, v in co.items()) + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def environment(inst) -> dict:
    return {"comfyui": inst.describe(), "torch": torch.__version__, "device": "cpu",
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def main(argv=None) -> None:
    from core2.arch import SIZES  # the size names only: the pack itself is loaded later, as ComfyUI loads it

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller: 60 samples, no zigzag rows, fewer repetitions")
    ap.add_argument("--work", type=Path, default=ROOT / "bench_out", help="folder for the benchmark's dataset and weak model")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--samples", type=int, default=None, help="held-out samples per method (default 480; quick 60)")
    ap.add_argument("--budgets", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="step counts n to compare at, comma-separated (default 4,6,10,20; quick 10)")
    ap.add_argument("--seeds-per-prompt", dest="seeds_per_prompt", type=int, default=None,
                    help=f"collected seeds per prompt (default {BENCH_DEFAULTS['seeds_per_prompt']})")
    ap.add_argument("--train-steps", dest="train_steps", type=int, default=None,
                    help=f"weak-model training steps (default {BENCH_DEFAULTS['train_steps']})")
    ap.add_argument("--size", choices=SIZES, default=None,
                    help=f"weak model size (default {BENCH_DEFAULTS['size']})")
    ap.add_argument("--world", choices=["shapes", "scenes"], default="shapes",
                    help="toy world to measure quality on (scenes: results in <results>/scenes/, work in <work>/scenes/)")
    ap.add_argument("--headroom", action=argparse.BooleanOptionalAction, default=None,
                    help="add CFG at 2n steps and a cfg sweep at n steps (default: on for scenes)")
    ap.add_argument("--scale-sweep", action=argparse.BooleanOptionalAction, default=None,
                    help="add CFG at n/2 steps at other guidance scales, the equal-passes peer at its best scale "
                         "(default: on for scenes, where the best scale depends on the step count)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts collected (default 120)")
    ap.add_argument("--cfg", type=float, default=None,
                    help="guidance scale of every row (default: the scale the dataset is collected at, 5)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                    help="weak model with guidance memory (default on, as Reflect trains it)")
    ap.add_argument("--seed", type=int, default=700_000, help="first evaluation seed (never collected)")
    ap.add_argument("--batch", type=int, default=60)
    ap.add_argument("--no-zigzag", dest="zigzag", action="store_false", help="leave out the Z-Sampling / Z-CoRe² rows")
    ap.add_argument("--hw", type=int, default=32, help="UNet latent size for the speed part")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5; quick 3)")
    ap.add_argument("--collect-reps", type=int, default=None)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-collect", action="store_true", help="no Collect-overhead measurement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tables-only", action="store_true", help="only rewrite results.md from the JSON files")
    args = ap.parse_args(argv)
    args.samples = args.samples or (60 if args.quick else 480)
    args.budgets = args.budgets or ([10] if args.quick else [4, 6, 10, 20])
    if args.quick:
        args.zigzag = False
    args.reps = args.reps or (3 if args.quick else 5)
    if args.headroom is None:
        args.headroom = args.world == "scenes"
    if args.scale_sweep is None:
        args.scale_sweep = args.world == "scenes"
    if args.world != "shapes":
        args.results, args.work = args.results / args.world, args.work / args.world
        args.skip_speed = True  # the speed part does not depend on the toy world
    args.collect_reps = args.collect_reps or (3 if args.quick else 5)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from demo import pipeline

    inst, _ = pipeline.setup(args.work, args.threads)
    env = environment(inst)
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    from comfyui_core2.core2.files import atomic_write_json

    if not args.skip_quality and not args.tables_only:
        t0 = time.perf_counter()
        q = run_quality(args, env)
        q["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(args.results / f"quality{suffix}.json", q)
        log.info("quality: %s", json.dumps(q["checks"]))
    if not args.skip_speed and not args.tables_only:
        t0 = time.perf_counter()
        s = run_speed(args, env)
        s["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(args.results / f"speed{suffix}.json", s)
    md = write_tables(args.results, suffix)
    print("\n" + md)
    print(f"results: {args.results}")


def write_tables(results: Path, suffix: str = "") -> str:
    """results{suffix}.md from whichever result files exist (a partial rerun keeps the other part's table)."""
    tables = []
    q, s = results / f"quality{suffix}.json", results / f"speed{suffix}.json"
    if q.is_file():
        tables.append("### Quality vs model passes (toy world)\n\n" + quality_table(json.loads(q.read_text())))
    if s.is_file():
        tables.append("### Step speed (CPU)\n\n" + speed_table(json.loads(s.read_text())))
    md = "\n\n".join(tables) + "\n"
    (results / f"results{suffix}.md").write_text(md, encoding="utf-8")
    return md


if __name__ == "__main__":
    main()
