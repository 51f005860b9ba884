"""The benchmark's headline checks and table, on made-up rows: the right rows are compared, both ways round."""
import math

import torch

from bench import run as bench


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def _rows(acc: dict, fd: dict, n_budgets=(6, 10)):
    rows = []
    for budget, m in bench.quality_methods(list(n_budgets), 5.0, 1.5, zigzag=True):
        if m.kind == "cfg":
            passes = m.steps * (1 if m.cfg == 1.0 else 2)
        else:
            passes = m.steps + m.slow_steps
        a = acc.get(m.name, 0.9)
        rows.append({**m.as_dict(), "budget": budget, "passes_per_image": float(passes), "fd": fd.get(m.name, 50.0),
                     "accuracy": {"mean": a, "shape": a, "colour": a, "position": a}, "seconds": 1.0,
                     "accuracy_se": round(_binomial_se(a, 480), 4), "passes_vs_cfg": passes / (2 * budget)})
    return rows


def test_methods_per_budget_and_lean_rows_fit_0_6x():
    planned = bench.quality_methods([6, 10, 20], 5.0, 1.5, zigzag=False)
    names = [m.name for _, m in planned]
    assert names[0] == "cfg 1, 20 steps" and "CFG, 3 steps" in names and "CoRe², 20 steps, 4 slow" in names
    for n in (6, 10, 20):  # (CFG at 10 steps is both budget 10's full CFG and budget 20's half: evaluated once)
        per = [m.name for b, m in planned if b == n]
        assert len(set(per)) == len(per)
    for n in (6, 10, 20):
        k = bench.lean_slow(n)
        assert k >= 1 and n + k <= 0.6 * 2 * n + 1e-9 and n + k + 1 > 0.6 * 2 * n  # the most slow steps that fit
        steps, slow = bench.equal_pass_mixed(n)
        assert steps + slow == n and 1 <= slow < steps
        assert f"CoRe², {steps} steps, {slow} slow" in names
        heavy = bench.equal_pass_heavy(n)  # twice the slow steps, same passes, still more fast than slow
        assert heavy == (n - 2 * slow, 2 * slow) and heavy[0] > heavy[1]
        assert f"CoRe², {heavy[0]} steps, {heavy[1]} slow" in names
        assert f"cfg-reuse, {heavy[0]} steps, {heavy[1]} slow" in names  # the fill-ins at its passes too
    for budget, m in planned:  # every CoRe² row at the n-pass budget spends exactly the passes of CFG at n/2 steps
        if m.note == "n passes" and m.kind == "core2":
            assert m.steps + m.slow_steps == budget
    assert bench.equal_pass_heavy(4) is None  # 2 steps, 2 slow: no fast step left to speak of
    assert bench.lean_slow(4) == 0 and not any(m.name == "CoRe², 4 steps, 0 slow"
                                               for _, m in bench.quality_methods([4], 5.0, 1.5, zigzag=False))
    assert not any("Z-" in n for n in names)
    assert [m.name for _, m in bench.quality_methods([10], 5.0, 1.5, zigzag=True)][-2:] == ["Z-Sampling, 10 steps",
                                                                                            "Z-CoRe², 10 steps"]


def test_checks_compare_equal_passes_and_cheap_rows():
    acc = {"CFG, 6 steps": 0.97, "CFG, 3 steps": 0.88, "CoRe², 6 steps, all-fast": 0.93, "CoRe², 6 steps, 1 slow": 0.965,
           "CoRe², 5 steps, 1 slow": 0.85, "CoRe², 4 steps, 2 slow": 0.86, "CoRe², 4 steps, 2 slow spread": 0.87,
           "CFG, 10 steps": 0.97, "CFG, 5 steps": 0.96, "CoRe², 10 steps, all-fast": 0.90, "CoRe², 10 steps, 2 slow": 0.91,
           "CoRe², 8 steps, 2 slow": 0.965}
    fd = {"CFG, 3 steps": 80.0, "CoRe², 6 steps, all-fast": 60.0, "CoRe², 6 steps, 1 slow": 55.0,
          "CoRe², 5 steps, 1 slow": 90.0, "CoRe², 4 steps, 2 slow": 95.0, "CoRe², 4 steps, 2 slow spread": 85.0,
          "CFG, 5 steps": 40.0, "CoRe², 10 steps, all-fast": 70.0, "CoRe², 10 steps, 2 slow": 65.0,
          "CoRe², 8 steps, 2 slow": 45.0}
    checks = bench.quality_checks(_rows(acc, fd), [6, 10])
    e6, e10 = checks["6"]["equal_passes"], checks["10"]["equal_passes"]
    assert e6["cfg"] == "CFG, 3 steps" and set(e6["candidates"]) == {
        "CoRe², 6 steps, all-fast", "CoRe², 5 steps, 1 slow", "CoRe², 4 steps, 2 slow", "CoRe², 4 steps, 2 slow spread"}
    assert e6["better_accuracy"] == ["CoRe², 6 steps, all-fast"] and e6["better_fd"] == ["CoRe², 6 steps, all-fast"]
    assert e10["better_accuracy"] == ["CoRe², 8 steps, 2 slow"] and e10["better_fd"] == []
    m6 = checks["6"]["matches_cfg_at_0.6x_passes"]
    assert set(m6["candidates"]) == {"CoRe², 6 steps, all-fast", "CoRe², 6 steps, 1 slow", "CoRe², 5 steps, 1 slow",
                                     "CoRe², 4 steps, 2 slow", "CoRe², 4 steps, 2 slow spread"}
    assert m6["met_by"] == ["CoRe², 6 steps, 1 slow"]  # within 2 SE of the difference from 0.97, FD below CFG at 3 steps
    tol = m6["candidates"]["CoRe², 6 steps, 1 slow"]["accuracy_tolerance"]  # rows without scores: unpaired SEs combined
    assert math.isclose(tol, 2 * math.hypot(_binomial_se(0.97, 480), _binomial_se(0.965, 480)), abs_tol=2e-4)
    assert e6["candidates"]["CoRe², 6 steps, all-fast"]["vs_cfg_in_se"] > 2 > e6["candidates"]["CoRe², 4 steps, 2 slow"][
        "vs_cfg_in_se"]
    assert checks["10"]["matches_cfg_at_0.6x_passes"]["met_by"] == []  # 0.965 is close enough, but FD 45 > 40
    res = {"setup": {"samples": 480, "cfg": 5.0, "w2s_scale": 1.5, "fd_real_vs_real": 12.0, "collected": "120 × 8"},
           "training": {"size": "small", "steps": 3000, "val_rel_err": 0.7, "validation_on": "held-out prompts"},
           "methods": _rows(acc, fd), "checks": checks}
    table = bench.quality_table(res)
    assert "| 6 | CoRe², 6 steps, all-fast | 6 |" in table
    assert "CoRe² better on accuracy: CoRe², 6 steps, all-fast; on FD: CoRe², 6 steps, all-fast" in table
    assert "CoRe² better on accuracy: CoRe², 8 steps, 2 slow; on FD: no" in table
    assert "no CoRe² row matches CFG, 10 steps" in table


def test_fillin_rows_sit_at_the_trained_rows_passes_and_are_compared():
    rows = _rows({}, {}, n_budgets=(10,))
    fills = [r for r in rows if r["note"] == "training-free"]
    assert {r["kind"] for r in fills} == {"scheduled-cfg", "cfg-reuse"}
    for r in fills:  # same steps and slow steps as a trained CoRe² row of the budget
        assert any(c["kind"] == "core2" and c["steps"] == r["steps"] and c["slow_steps"] == r["slow_steps"] for c in rows)
    for r in rows:
        if r["kind"] == "core2":
            r["accuracy"]["mean"] = 0.95
        elif r["note"] == "training-free":
            r["accuracy"]["mean"] = 0.80
        elif r["note"].startswith("training-free"):  # the spread and front reuse rows
            r["accuracy"]["mean"] = 0.90
    checks = bench.fillin_checks(rows)
    first = {"CoRe², 8 steps, 2 slow", "CoRe², 6 steps, 4 slow", "CoRe², 10 steps, 2 slow"}
    front = {"CoRe², 6 steps, 4 slow"}  # front differs from first only from 4 slow steps on
    assert set(checks) == first | {n + " spread" for n in first} | {n + " front" for n in front}
    assert all(v > 3 for n in first for v in checks[n].values()) and all(len(checks[n]) == 2 for n in first)
    # a spread or front row is compared with the reuse fill-in placed the same way, not with the first-k fill-ins
    placed = [n + " spread" for n in first] + [n + " front" for n in front]
    assert all(set(checks[n]) == {"cfg-reuse"} for n in placed)
    assert all(0 < checks[n]["cfg-reuse"] < checks[n.rsplit(" ", 1)[0]]["cfg-reuse"] for n in placed)


def test_spread_rows_are_sampled_apart_from_first_rows():
    planned = bench.quality_methods([4, 10], 5.0, 1.5, zigzag=False)
    spread = [m for n, m in planned if m.placement == "spread"]
    assert {(m.kind, m.steps, m.slow_steps) for m in spread} == {("core2", 8, 2), ("cfg-reuse", 8, 2),
                                                                  ("core2", 6, 4), ("cfg-reuse", 6, 4),
                                                                  ("core2", 10, 2), ("cfg-reuse", 10, 2)}
    front = [m for n, m in planned if m.placement == "front"]  # only where front differs from first: 4+ slow steps
    assert {(m.kind, m.steps, m.slow_steps) for m in front} == {("core2", 6, 4), ("cfg-reuse", 6, 4)}
    first_keys = {bench._sampling_key(m) for _, m in planned if m.placement == "first"}
    placed_keys = {bench._sampling_key(m) for m in spread + front}
    assert not first_keys & placed_keys and len(placed_keys) == 8  # never deduplicated into a first-k row or each other


def test_headroom_checks_read_steps_guidance_and_overguidance():
    planned = bench.quality_methods([10, 20], 5.0, 1.5, zigzag=False) + bench.headroom_methods(20, 5.0)
    acc = {"CFG, 20 steps": 0.85, "CFG, 10 steps": 0.78, "CFG, 40 steps": 0.88, "cfg 1, 20 steps": 0.55,
           "CFG 2, 20 steps": 0.75, "CFG 3, 20 steps": 0.82, "CFG 7, 20 steps": 0.84, "CFG 9, 20 steps": 0.80,
           "CoRe², 20 steps, all-slow": 0.89}
    row = lambda b, m: {**m.as_dict(), "budget": b, "accuracy": {"mean": acc.get(m.name, 0.5)},  # noqa: E731
                        "accuracy_se": _binomial_se(acc.get(m.name, 0.5), 480)}
    rows = [row(b, m) for b, m in planned]
    h = bench.headroom_checks(rows, 20, 5.0)
    assert h["cfg_in_0.70_0.92"] and h["best_cfg"] == 5.0 and h["best_cfg_interior"]
    assert h["steps_half_vs_n_in_se"] > 2 and h["steps_n_vs_double_in_se"] > 1 and h["cfg1_gap"] == 0.3
    assert h["all_slow_vs_cfg_in_se"] > 1
    acc["CFG 9, 20 steps"] = 0.95  # over-guidance no longer hurts: the best scale is the largest tried
    rows = [row(b, m) for b, m in planned]
    assert not bench.headroom_checks(rows, 20, 5.0)["best_cfg_interior"]


def test_equal_passes_also_face_cfg_at_half_the_steps_at_its_best_scale():
    """Where the best guidance scale depends on the step count, CoRe² at n passes is also compared with CFG at n/2
    steps at the best scale of the headroom sweep, not only at the budget's scale."""
    halves = bench.half_sweep_methods([6, 20], 5.0)
    assert {(n, m.cfg, m.steps) for n, m in halves} == {(n, c, n // 2) for n in (6, 20) for c in (2.0, 3.0, 7.0, 9.0)}
    planned = bench.quality_methods([20], 5.0, 1.5, zigzag=False) + bench.half_sweep_methods([20], 5.0)
    acc = {"CFG, 10 steps": 0.80, "CFG 3, 10 steps": 0.86, "CoRe², 16 steps, 4 slow": 0.85}
    rows = [{**m.as_dict(), "budget": b, "accuracy": {"mean": acc.get(m.name, 0.5)}, "fd": 10.0,
             "accuracy_se": 0.01, "passes_per_image": float(m.steps * (2 if m.kind == "cfg" and m.cfg != 1 else 1)
                                                            if m.kind == "cfg" else m.steps + m.slow_steps)}
            for b, m in planned]
    e = bench.quality_checks(rows, [20])["20"]["equal_passes"]
    assert e["cfg"] == "CFG, 10 steps" and "CoRe², 16 steps, 4 slow" in e["better_accuracy"]
    best = e["best_cfg"]
    assert best["name"] == "CFG 3, 10 steps" and best["cfg_scale"] == 3.0
    assert best["vs_best_in_se"]["CoRe², 16 steps, 4 slow"] < 0 < e["candidates"]["CoRe², 16 steps, 4 slow"]["vs_cfg_in_se"]
    acc["CFG 3, 10 steps"] = 0.79  # no scale beats the budget's own: no second comparison
    rows = [{**r, "accuracy": {"mean": acc.get(r["name"], 0.5)}} for r in rows]
    assert "best_cfg" not in bench.quality_checks(rows, [20])["20"]["equal_passes"]


def test_checks_find_rows_by_budget_and_role_not_by_label():
    """Renaming the display labels changes only the names in the checks, never which rows they compare."""
    import json

    acc = {"CFG, 6 steps": 0.97, "CFG, 3 steps": 0.88, "CoRe², 6 steps, all-fast": 0.93, "CoRe², 6 steps, 1 slow": 0.965}
    fd = {"CFG, 3 steps": 80.0, "CoRe², 6 steps, all-fast": 60.0, "CoRe², 6 steps, 1 slow": 55.0}
    rows = _rows(acc, fd)
    renamed = [{**r, "name": "renamed " + r["name"]} for r in rows]
    a, b = bench.quality_checks(rows, [6, 10]), bench.quality_checks(renamed, [6, 10])
    assert a["6"]["equal_passes"]["cfg"] == "CFG, 3 steps" and a["6"]["matches_cfg_at_0.6x_passes"]["met_by"]
    assert json.dumps(b).replace("renamed ", "") == json.dumps(a)
    planned = bench.quality_methods([10, 20], 5.0, 1.5, zigzag=False) + bench.headroom_methods(20, 5.0)
    hrows = [{**m.as_dict(), "budget": n, "accuracy": {"mean": 0.5 + 0.01 * i}, "accuracy_se": 0.02}
             for i, (n, m) in enumerate(planned)]
    h = bench.headroom_checks(hrows, 20, 5.0)
    assert h == bench.headroom_checks([{**r, "name": "x" + r["name"], "note": ""} for r in hrows], 20, 5.0)
    assert set(h["cfg_sweep"]) == {1.0, 2.0, 3.0, 5.0, 7.0, 9.0} and "all_slow_vs_cfg_in_se" in h
    keys = [(n, m.role) for n, m in planned]
    assert all(role for _, role in keys) and len(set(keys)) == len(keys)  # every row has a role, unique per budget


def test_differences_are_judged_on_paired_pictures_when_the_rows_carry_scores():
    """Rows sampled on the same prompts and noise: the difference's SE is that of the per-picture differences, far
    below the two rows' SEs combined when the pictures agree; rows without scores fall back to the latter."""
    gen = torch.Generator().manual_seed(0)
    base = (torch.rand(480, generator=gen) < 0.8).double()
    better = base.clone()
    better[torch.nonzero(base == 0)[:20, 0]] = 1.0  # the same pictures, 20 of them fixed
    a = {"accuracy": {"mean": float(better.mean())}, "accuracy_se": float(better.std() / math.sqrt(480)),
         "picture_scores": better.tolist()}
    b = {"accuracy": {"mean": float(base.mean())}, "accuracy_se": float(base.std() / math.sqrt(480)),
         "picture_scores": base.tolist()}
    paired = bench.diff_se(a, b)
    assert math.isclose(paired, float((better - base).std() / math.sqrt(480)), rel_tol=1e-9)
    unpaired = math.hypot(a["accuracy_se"], b["accuracy_se"])
    assert paired < 0.5 * unpaired
    assert bench.in_se(a, b) > 4 > (a["accuracy"]["mean"] - b["accuracy"]["mean"]) / unpaired
    other_runs = [{k: v for k, v in r.items() if k != "picture_scores"} for r in (a, b)]
    assert math.isclose(bench.diff_se(*other_runs), unpaired)
    shuffled = {**b, "picture_scores": base[torch.randperm(480, generator=gen)].tolist()}  # other pictures: no pairing to exploit
    assert bench.diff_se(a, shuffled) > 0.8 * unpaired


def test_collect_overhead_comes_back_as_json(monkeypatch):
    """bench.run reads bench/collect_overhead.py's --json file, not its printed table."""
    import json
    import subprocess
    from pathlib import Path

    seen = {}

    def fake_run(cmd, **kw):
        out = Path(cmd[cmd.index("--json") + 1])
        seen["cmd"] = cmd
        out.write_text(json.dumps({"cases": {"sd15-32": {"plain_s": 1.25, "recorded_s": 1.5, "overhead_pct": 20.0,
                                                          "evaluations": 40, "mib_written": 0.9,
                                                          "queue_wait_s": 0.01}}}))
        return subprocess.CompletedProcess(cmd, 0, stdout="a table with other columns\n", stderr="")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    res = bench.collect_overhead(3)
    assert res["cases"] == {"sd15-32": {"plain_s": 1.25, "recorded_s": 1.5, "overhead_pct": 20.0}}
    assert res["reps"] == 3 and "--reps 3" in res["command"] and "--json" not in res["command"]


def test_scaling_table_lists_each_dataset_size_with_its_rows():
    from bench import scaling

    roles = [m.role for m in scaling.methods(5.0, 1.5)]
    assert roles == ["cfg", "cfg-half", "all-fast", "mixed"]
    row = lambda role, acc: {"role": role, "accuracy": {"mean": acc}, "accuracy_se": 0.01}  # noqa: E731
    sizes = [{"trajectories": n, "val_rel_err": err, "prep_seconds": 60.0,
              "rows": [row("cfg", 0.97), row("cfg-half", 0.96), row("all-fast", fast), row("mixed", 0.95)]}
             for n, err, fast in ((120, 1.02, 0.70), (1920, 0.65, 0.94))]
    md = scaling.table({"train_steps": 2000, "samples": 240, "sizes": sizes})
    lines = [ln for ln in md.splitlines() if ln.startswith("| 120 ") or ln.startswith("| 1920 ")]
    assert len(lines) == 2 and "1.020" in lines[0] and "0.700 ± 0.010" in lines[0] and "0.940 ± 0.010" in lines[1]


def test_perfect_weak_model_rows_bound_what_any_weak_model_can_add():
    planned = bench.quality_methods([4, 10, 20], 5.0, 1.5, zigzag=False)
    tops = {(n, m.steps) for n, m in planned if m.role.startswith("cfg-steps")}
    assert tops == {(4, 3), (10, 8), (10, 6), (20, 16), (20, 12)}  # the CoRe² rows' own step counts, CFG at each
    assert all(m.kind == "cfg" and m.cfg == 5.0 for _, m in planned if m.role.startswith("cfg-steps"))
    rows = _rows({"CFG, 8 steps": 0.90, "CoRe², 8 steps, 2 slow": 0.95, "scheduled-cfg, 8 steps, 2 slow": 0.70,
                  "cfg-reuse, 8 steps, 2 slow": 0.899}, {}, n_budgets=(10,))
    checks = bench.ceiling_checks(rows)
    c = checks["CoRe², 8 steps, 2 slow"]
    assert c["cfg"] == "CFG, 8 steps" and c["cfg_accuracy"] == 0.90 and c["row_vs_cfg_in_se"] > 2
    assert c["cfg_vs_fillin_in_se"]["scheduled-cfg"] > 5 and abs(c["cfg_vs_fillin_in_se"]["cfg-reuse"]) < 0.1
    assert checks["CoRe², 8 steps, 2 slow spread"]["cfg"] == "CFG, 8 steps"  # CFG has no placement: same bound
    assert "CoRe², 10 steps, all-fast" not in checks  # no fill-in rows at its steps
    res = {"setup": {"samples": 480, "cfg": 5.0, "w2s_scale": 1.5, "fd_real_vs_real": 12.0, "collected": "120 × 8"},
           "training": {"size": "small", "steps": 3000, "val_rel_err": 0.7, "validation_on": "held-out prompts"},
           "methods": rows, "checks": {}, "fillin_checks": bench.fillin_checks(rows), "ceiling_checks": checks}
    table = bench.quality_table(res)
    assert "- CoRe², 8 steps, 2 slow: vs scheduled-cfg " in table and "; CFG, 8 steps 0.900 (this row +" in table
