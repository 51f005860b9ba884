"""Train the scenes-world flow model (CPU, one thread) and save it as fp16 safetensors. Resumable.

    python -m toy.scenes.train --out toy/weights/scenes_t2i.safetensors --steps 6000

Run from the repository root (it activates ComfyUI through tools/comfy_env.py: the model is ComfyUI's own MMDiT,
so what is trained here is exactly what ComfyUI's samplers run). Flow matching as SD3: x_σ = (1 − σ)·x0 + σ·ε, the
model predicts v = ε − x0 at timestep 1000·σ. A fraction of the prompts is dropped (empty prompt) so that
classifier-free guidance works, and every caption field is, with probability --caption-noise, replaced by a random
one (imperfect captions, as real data has). A checkpoint (<out>.ckpt.pt: weights, EMA, optimiser, step, RNG) is
written every --save-every steps and the run resumes from it; the weights file is rewritten from the EMA each time.
Without a checkpoint, --init-from continues from a weights file (the shipped one): its EMA weights, a new optimiser.

The shipped weights: `--lr 6e-4` (other settings default), 6250 steps with the version-1 text encoder, then
continued with `--init-from` to 13000, then to 17500 with `--cooldown 4000` (the learning rate decays linearly to 0
over the last 4000 steps; the file's metadata `trained_steps` says where). To train further (a new cooldown after a
stable phase): `python -m toy.scenes.train --init-from toy/weights/scenes_t2i.safetensors --out /tmp/scenes_t2i.safetensors
--lr 6e-4 --steps 25000 --cooldown 4000`.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger("toy.scenes.train")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "weights" / "scenes_t2i.safetensors"


@dataclass
class Settings:
    seed: int = 0
    steps: int = 6000
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 200
    uncond_prob: float = 0.12
    caption_noise: float = 0.15
    ema_decay: float = 0.999
    save_every: int = 250
    cooldown: int = 0  # the last `cooldown` steps decay the learning rate linearly to 0 (warmup-stable-decay)


def _sigmas(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Training noise levels: logit-normal (SD3's choice) for 70% of rows, uniform for the rest (the ends matter too)."""
    logit = torch.sigmoid(torch.randn(batch, generator=gen))
    uniform = torch.rand(batch, generator=gen)
    pick = torch.rand(batch, generator=gen) < 0.7
    return torch.where(pick, logit, uniform).clamp(1e-4, 1.0)


def _batch(cfg: Settings, gen: torch.Generator):
    """Clean latents [B, 48, 16, 16] and training prompts (noisy captions, some dropped)."""
    from .. import pixels
    from . import data, model

    b = data.sample_batch(cfg.batch, gen)
    noisy = data.noisy_labels(b.labels, cfg.caption_noise, gen)
    drop = torch.rand(cfg.batch, generator=gen) < cfg.uncond_prob
    prompts = ["" if d else data.Scene.from_label(lab).prompt for d, lab in zip(drop.tolist(), noisy.tolist())]
    return pixels.to_latent(b.images, model.PATCH), prompts


def learning_rate(cfg: Settings, step: int) -> float:
    """Linear warmup, then constant, then (with cooldown > 0) a linear decay to 0 over the last `cooldown` steps."""
    warm = min(1.0, (step + 1) / cfg.warmup)
    left = cfg.steps - step
    return cfg.lr * warm * (min(1.0, left / cfg.cooldown) if cfg.cooldown > 0 else 1.0)


class Trainer:
    def __init__(self, cfg: Settings, out: Path):
        from . import model, text

        self.cfg, self.out = cfg, out
        self.ckpt = out.with_name(out.stem + ".ckpt.pt")
        torch.manual_seed(cfg.seed)
        self.base = model.build()
        model.initialise(self.base, cfg.seed)
        self.net = self.base.diffusion_model
        torch.manual_seed(cfg.seed + 1)
        self.encoder = text.encoder()
        self.params = list(self.net.parameters()) + list(self.encoder.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.ema = {k: v.detach().clone() for k, v in self._state().items()}
        self.gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.step = 0

    def _state(self) -> dict:
        from . import model

        sd = {model.DIFFUSION_PREFIX + k: v for k, v in self.net.state_dict().items()}
        sd.update({model.TEXT_PREFIX + k: v for k, v in self.encoder.state_dict().items()})
        return sd

    def _load_weights(self, sd: dict, strict: bool = True) -> None:
        """strict=False: text-encoder layers the file lacks (an older version) keep their identity init."""
        from . import model

        unet, txt = model.split_state_dict(sd)
        self.net.load_state_dict(unet)
        missing, unexpected = self.encoder.load_state_dict(txt, strict=strict)
        if missing or unexpected:
            log.info("text encoder: %d new tensors start fresh, %d dropped", len(missing), len(unexpected))

    def resume(self) -> None:
        if not self.ckpt.is_file():
            return
        state = torch.load(self.ckpt, weights_only=True)
        if state["settings"] != asdict(self.cfg) | {"steps": state["settings"]["steps"]}:
            raise ValueError(f"{self.ckpt} was trained with other settings {state['settings']}; move it away to restart")
        self._load_weights(state["model"])
        self.ema = state["ema"]
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["rng"])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", self.ckpt, self.step)

    def warm_start(self, path: Path) -> None:
        """Continue from a shipped weights file (its EMA weights; a fresh optimiser), when no checkpoint exists:
        the .ckpt.pt file is too big to ship, the fp16 weights are not."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from . import model

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        model.check_metadata(meta, path, any_version=True)
        self._load_weights({k: v.float() for k, v in load_file(str(path)).items()}, strict=False)
        self.ema = {k: v.detach().clone() for k, v in self._state().items()}
        self.step = int(meta.get("trained_steps", 0))
        log.info("warm start from %s at step %d (fresh optimiser)", path, self.step)

    def train_step(self) -> float:
        from .. import text as toy_text
        from . import text

        x0, prompts = _batch(self.cfg, self.gen)
        sigma = _sigmas(len(prompts), self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        s = sigma.view(-1, 1, 1, 1)
        x = (1.0 - s) * x0 + s * noise
        tokens, pooled = self.encoder(toy_text.tokenize_batch(prompts, text.VOCAB, text.SYNONYMS))
        v = self.net(x, sigma * 1000.0, context=tokens, y=pooled)
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(self.cfg, self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self._update_ema()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = min(self.cfg.ema_decay, (self.step + 1) / (self.step + 10))
        for k, v in self._state().items():
            if v.is_floating_point():
                self.ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.ema[k].copy_(v)

    def save(self) -> None:
        from safetensors.torch import save_file

        from . import model

        self.out.parent.mkdir(parents=True, exist_ok=True)
        meta = model.metadata() | {k: str(v) for k, v in asdict(self.cfg).items()} | {"trained_steps": str(self.step)}
        tmp = self.out.with_suffix(".tmp")
        save_file({k: v.half().contiguous() for k, v in self.ema.items()}, str(tmp), metadata=meta)
        tmp.replace(self.out)
        state = {"model": self._state(), "ema": self.ema, "optimizer": self.opt.state_dict(),
                 "rng": self.gen.get_state(), "step": self.step, "settings": asdict(self.cfg)}
        torch.save(state, str(self.ckpt) + ".tmp")
        Path(str(self.ckpt) + ".tmp").replace(self.ckpt)


def train(cfg: Settings, out: Path, init_from: Path | None = None) -> Path:
    trainer = Trainer(cfg, out)
    if init_from is not None and not trainer.ckpt.is_file():
        trainer.warm_start(init_from)
    trainer.resume()
    t0, start, running = time.time(), trainer.step, []
    while trainer.step < cfg.steps:
        running.append(trainer.train_step())
        if trainer.step % 50 == 0:
            el = time.time() - t0
            left = el / (trainer.step - start) * (cfg.steps - trainer.step)
            log.info("step %d/%d  loss %.4f  %.0fs elapsed, ~%.0fs left", trainer.step, cfg.steps,
                     sum(running) / len(running), el, left)
            running = []
        if trainer.step % cfg.save_every == 0 or trainer.step == cfg.steps:
            trainer.save()
    log.info("saved %s (%.1f MB) after %d steps", out, out.stat().st_size / 1e6, trainer.step)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .safetensors file")
    for field, value in asdict(Settings()).items():
        ap.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    ap.add_argument("--init-from", type=Path, default=None,
                    help="without a checkpoint, continue from this weights file (e.g. the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    args = vars(ap.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.pop("threads"))
    out, init_from = args.pop("out"), args.pop("init_from")
    from tools import comfy_env

    log.info("training with %s", comfy_env.activate().describe())
    train(Settings(**args), out, init_from)


if __name__ == "__main__":
    main()
