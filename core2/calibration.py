"""Guidance calibration: fast steps that guide as strongly as CFG (docs/method.md §3, "Guidance calibration").

A weak model trained on a squared error predicts the *expected* guidance given what it sees, and an average is
shorter than the vectors it averages: where the model is unsure (no slow step to remember yet, low σ), its guidance
difference r_c − r̂_u is shorter than CFG's r_c − r_u, and an all-fast run is guided too weakly. After training, on
held-out rows, measure per σ band how much longer it must be,

    g = sqrt( Σ ‖r_c − r_u‖² / Σ ‖r_c − r̂_u‖² ),

and multiply the predicted guidance difference by g(σ) (interpolated in log σ) on the steps where the model had no
slow step to go on. Gains are kept within [1, MAX_GAIN]: never weaker than trained, and a forged file cannot blow the
guidance up. Plain torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_GAIN = 3.0
BANDS = 8
MIN_ROWS_PER_BAND = 8


@dataclass(frozen=True)
class GuidanceGain:
    """Gains at knots in log σ (increasing); between knots linear, outside them the nearest knot's gain."""
    log_sigma: tuple[float, ...]
    gain: tuple[float, ...]

    def at(self, sigma: torch.Tensor) -> torch.Tensor:
        """The gain for each σ in a [B] (or scalar) tensor, as a [B] tensor of σ's dtype."""
        sig = torch.as_tensor(sigma)
        s = sig.reshape(-1).double().clamp_min(1e-12).log()
        xs = torch.tensor(self.log_sigma, dtype=torch.float64, device=s.device)
        ys = torch.tensor(self.gain, dtype=torch.float64, device=s.device)
        s = s.clamp(float(xs[0]), float(xs[-1]))
        i = torch.searchsorted(xs, s, right=True).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        t = ((s - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
        return (y0 + t * (y1 - y0)).to(sig.dtype if sig.is_floating_point() else torch.float32)

    def as_meta(self) -> dict:
        return {"log_sigma": list(self.log_sigma), "gain": list(self.gain)}  # JSON keeps floats exact

    @classmethod
    def from_meta(cls, meta) -> "GuidanceGain | None":
        """The gain a file's metadata describes (None when it has none); ValueError naming what is wrong."""
        if meta is None:
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("log_sigma"), list) or not isinstance(meta.get("gain"), list):
            raise ValueError("guidance_gain must hold two lists, log_sigma and gain")
        xs, ys = meta["log_sigma"], meta["gain"]
        if not (1 <= len(xs) == len(ys) <= 64) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in xs + ys):
            raise ValueError("guidance_gain needs 1 to 64 finite knots, as many gains as log σ values")
        if any(b <= a for a, b in zip(xs, xs[1:])) or not all(1.0 <= y <= MAX_GAIN for y in ys):
            raise ValueError(f"guidance_gain needs increasing log σ knots and gains within [1, {MAX_GAIN:g}]")
        if len(xs) == 1:
            xs, ys = [xs[0], xs[0] + 1e-6], [ys[0], ys[0]]
        return cls(tuple(float(v) for v in xs), tuple(float(v) for v in ys))

    def describe(self) -> str:
        return f"×{min(self.gain):.2f}–{max(self.gain):.2f}"


def measure(sigma: torch.Tensor, true_energy: torch.Tensor, predicted_energy: torch.Tensor,
            bands: int = BANDS) -> GuidanceGain | None:
    """The gain curve from per-row σ, ‖r_c − r_u‖² and ‖r_c − r̂_u‖² (held-out rows): one knot per σ quantile band at
    its median log σ. None when there are too few rows to measure it."""
    sigma, t, p = (v.reshape(-1).double().cpu() for v in (sigma, true_energy, predicted_energy))
    ok = torch.isfinite(sigma) & torch.isfinite(t) & torch.isfinite(p) & (sigma > 0)
    sigma, t, p = sigma[ok], t[ok], p[ok]
    bands = min(bands, sigma.numel() // MIN_ROWS_PER_BAND)
    if bands < 1:
        return None
    order = torch.argsort(sigma)
    xs, ys = [], []
    for idx in torch.tensor_split(order, bands):
        pred = float(p[idx].sum())
        g = math.sqrt(float(t[idx].sum()) / pred) if pred > 0 else MAX_GAIN
        xs.append(float(sigma[idx].log().median()))
        ys.append(min(MAX_GAIN, max(1.0, g)))
    keep = [i for i in range(len(xs)) if i == 0 or xs[i] > xs[i - 1]]  # equal σ in two bands: keep the first
    return GuidanceGain.from_meta({"log_sigma": [xs[i] for i in keep], "gain": [ys[i] for i in keep]})


def calibrate_file(path, dataset_dir) -> GuidanceGain | None:
    """Measure and store the gain of a weak-model file trained before calibration existed, on the held-out rows of
    the dataset it was trained on (the same split: the file's seed and validation fraction). Only the metadata
    changes; the file is rewritten atomically."""
    from pathlib import Path

    from .train import TrainSettings, measure_guidance_gain, open_data
    from .weights_io import load_weak_model, read_metadata, save_weak_model

    path = Path(path)
    meta = read_metadata(path)
    tr = meta.get("training") or {}
    data = open_data(dataset_dir, TrainSettings(seed=int(tr.get("seed", 0)), val_fraction=float(tr.get("val_fraction", 0.1))))
    if (meta.get("dataset") or {}).get("manifest_hash") != data.manifest_hash:
        raise ValueError(f"CoRe²: {path.name} was not trained on {Path(dataset_dir).name} (or the dataset has grown "
                         "since); calibrate on the dataset it was trained on.")
    model = load_weak_model(path)
    gain = measure_guidance_gain(model, data.reader, data.val_items, "cpu")
    model.guidance_gain = gain
    save_weak_model(path, model, {**meta, "guidance_gain": gain.as_meta() if gain is not None else None})
    return gain


def main(argv=None) -> int:
    """python -m core2.calibration --dataset DIR FILE.safetensors"""
    import argparse

    p = argparse.ArgumentParser(description="Calibrate the guidance strength of a trained weak-model file "
                                            "(files trained by this version are calibrated already).")
    p.add_argument("file")
    p.add_argument("--dataset", required=True, help="the dataset folder the file was trained on")
    a = p.parse_args(argv)
    gain = calibrate_file(a.file, a.dataset)
    print(f"{a.file}: " + (f"guidance gain {gain.describe()} (σ knots {', '.join(f'{math.exp(v):.3g}' for v in gain.log_sigma)})"
                           if gain is not None else "too few held-out rows to calibrate; left uncalibrated"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
