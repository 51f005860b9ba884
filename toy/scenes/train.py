"""Train the scenes-world flow model and save it as fp16 safetensors. Resumable. CPU (one thread) or a CUDA GPU.

    python -m toy.scenes.train --out toy/weights/scenes_t2i.safetensors --steps 6000
    python -m toy.scenes.train --device cuda --minutes 7 --batch 512 --steps 1000000 --init-from FILE --out OUT

Run from the repository root (it activates ComfyUI through tools/comfy_env.py: the model is ComfyUI's own MMDiT,
so what is trained here is exactly what ComfyUI's samplers run). Flow matching as SD3: x_σ = (1 − σ)·x0 + σ·ε, the
model predicts v = ε − x0 at timestep 1000·σ. A fraction of the prompts is dropped (empty prompt) so that
classifier-free guidance works, and every caption field is, with probability --caption-noise, replaced by a random
one (imperfect captions, as real data has). A checkpoint (<out>.ckpt.pt: weights, EMA, optimiser, step, RNG) is
written every --save-every steps and the run resumes from it; the weights file is rewritten from the EMA each time.
Without a checkpoint, --init-from continues from a weights file (the shipped one): its EMA weights, a new optimiser
that warms up again. --device cuda draws the training pictures on the GPU and runs the model in bf16 autocast;
--bf16 does the same on a CPU with bf16 units (AMX or AVX512-BF16; the speed-ups measured are in --help; refused
on CPUs without them, ~30x slower there).
--compile runs the model through torch.compile (faster on a CPU, see --help; it needs a C++ compiler there).
--minutes boxes a run in wall-clock time, counted over all its resumed parts (the checkpoint keeps the seconds
trained): it re-plans its step count from the measured speed as it goes (TimeBox), with the last
--cooldown-fraction of the run decaying the learning rate to 0. Ctrl-C (or SIGTERM) finishes the step, saves and
stops; the same command goes on.

The shipped weights (the file's metadata `trained_steps` says where a file stands):
  1. CPU, batch 32, `--lr 6e-4`, caption noise 0.15: 6250 steps with the version-1 text encoder, continued with
     `--init-from` to 13000, then to 17500 with `--cooldown 4000` (about 4 hours of one CPU thread). It drew colours,
     sizes and relations but shapes as blobs (shape accuracy 0.32-0.39).
  2. An H200 GPU, 7 minutes: `--device cuda --minutes 7 --batch 512 --lr 6e-4 --caption-noise 0.3
     --cooldown-fraction 0.3 --steps 1000000 --init-from <1>` (to step 21646), then 4.3 minutes: the same with
     `--batch 1024 --minutes 4.3 --init-from <that>` (to step 23665). About 4.2 million more pictures than step 1
     saw: shapes are learned (0.70-0.77 with CFG). On this 2-core CPU that would take about 30 hours.
The caption noise went from 0.15 to 0.3 at step 2 so that cfg 1 follows prompts poorly enough for guidance to matter
(README: the scenes world). Runs 1 and 2 used different random streams; a rerun gives another, equally good model.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace
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
    depth: int = 4  # MMDiT blocks (width 64·depth): 4 is the shipped model's (model.DEPTH); README: --depth 3's speed


def _sigmas(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Training noise levels: logit-normal (SD3's choice) for 70% of rows, uniform for the rest (the ends matter too);
    on the generator's device."""
    d = gen.device
    logit = torch.sigmoid(torch.randn(batch, generator=gen, device=d))
    uniform = torch.rand(batch, generator=gen, device=d)
    pick = torch.rand(batch, generator=gen, device=d) < 0.7
    return torch.where(pick, logit, uniform).clamp(1e-4, 1.0)


def _batch(cfg: Settings, gen: torch.Generator, device=None):
    """Clean latents [B, 48, 16, 16] (drawn on `device`) and training prompts (noisy captions, some dropped)."""
    from .. import pixels
    from . import data, model

    b = data.sample_batch(cfg.batch, gen, device=device)
    noisy = data.noisy_labels(b.labels, cfg.caption_noise, gen)
    drop = torch.rand(cfg.batch, generator=gen) < cfg.uncond_prob
    prompts = ["" if d else data.Scene.from_label(lab).prompt for d, lab in zip(drop.tolist(), noisy.tolist())]
    return pixels.to_latent(b.images, model.PATCH), prompts


def learning_rate(cfg: Settings, step: int, start: int = 0) -> float:
    """Linear warmup from `start` (the step this run's optimiser began at), then constant, then (with cooldown > 0)
    a linear decay to 0 over the last `cooldown` steps."""
    warm = min(1.0, (step - start + 1) / cfg.warmup)
    left = cfg.steps - step
    return cfg.lr * warm * (min(1.0, left / cfg.cooldown) if cfg.cooldown > 0 else 1.0)


def use_fast_attention() -> None:
    """Train with PyTorch's fused attention (scaled_dot_product_attention). ComfyUI started with --cpu picks another
    kernel for the MMDiT module at import: a GPU run must replace it, and a CPU run trains faster without it too
    (1.18 → 1.10 s a step, batch 64, two threads, an AVX2 CPU). The result is the same attention."""
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    mmdit.optimized_attention = attention.attention_pytorch


class Trainer:
    def __init__(self, cfg: Settings, out: Path, device: str = "cpu", bf16: bool | None = None, compile: bool = False):
        from . import model, text

        self.cfg, self.out, self.device = cfg, out, torch.device(device)
        self.bf16 = self.device.type == "cuda" if bf16 is None else bool(bf16)  # autocast the model to bfloat16
        self.ckpt = out.with_name(out.stem + ".ckpt.pt")
        torch.manual_seed(cfg.seed)
        self.base = model.build(cfg.depth)
        model.initialise(self.base, cfg.seed)
        self.net = self.base.diffusion_model.to(self.device)
        if compile:  # in place: the state-dict names (checkpoints, EMA, the weights file) stay those of the module
            self.net.compile()
        torch.manual_seed(cfg.seed + 1)
        self.encoder = text.encoder().to(self.device)
        self.params = list(self.net.parameters()) + list(self.encoder.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.ema = {k: v.detach().clone() for k, v in self._state().items()}
        self.gen = torch.Generator().manual_seed(cfg.seed + 2)
        # on a GPU, noise and noise levels come from a generator there (no copies per step; not saved on resume)
        self.noise_gen = self.gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(cfg.seed + 3)
        self.step = 0
        self.optimiser_start = 0  # a warm start's fresh optimiser warms up again
        self.seconds = 0.0  # training wall clock of this run so far, over all its resumed parts

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
        state = torch.load(self.ckpt, weights_only=True, map_location=self.device)
        saved = asdict(Settings()) | state["settings"]  # a setting added since takes its default
        if _fixed(saved) != _fixed(asdict(self.cfg)):
            raise ValueError(f"{self.ckpt} was trained with other settings {state['settings']}; move it away to restart")
        self._load_weights(state["model"])
        self.ema = state["ema"]
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["rng"].cpu())
        self.step = int(state["step"])
        self.optimiser_start = int(state.get("optimiser_start", 0))
        self.seconds = float(state.get("seconds", 0.0))
        log.info("resumed from %s at step %d (%.0f s trained so far)", self.ckpt, self.step, self.seconds)

    def warm_start(self, path: Path) -> None:
        """Continue from a shipped weights file (its EMA weights; a fresh optimiser), when no checkpoint exists:
        the .ckpt.pt file is too big to ship, the fp16 weights are not."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from . import model

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        model.check_metadata(meta, path, any_version=True)
        depth = model.depth_of(meta)
        if depth != self.cfg.depth:
            raise ValueError(f"{path} has an MMDiT of depth {depth}; pass --depth {depth} to continue from it")
        self._load_weights({k: v.float() for k, v in load_file(str(path), device=str(self.device)).items()}, strict=False)
        self.ema = {k: v.detach().clone() for k, v in self._state().items()}
        self.step = self.optimiser_start = int(meta.get("trained_steps", 0))
        log.info("warm start from %s at step %d (fresh optimiser)", path, self.step)

    def train_step(self) -> float:
        from .. import text as toy_text
        from . import text

        x0, prompts = _batch(self.cfg, self.gen, self.device)
        sigma = _sigmas(len(prompts), self.noise_gen)
        noise = torch.randn(x0.shape, generator=self.noise_gen, device=self.device)
        s = sigma.view(-1, 1, 1, 1)
        x = (1.0 - s) * x0 + s * noise
        ids = toy_text.tokenize_batch(prompts, text.VOCAB, text.SYNONYMS).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            tokens, pooled = self.encoder(ids)
            v = self.net(x, sigma * 1000.0, context=tokens, y=pooled)
        loss = torch.nn.functional.mse_loss(v.float(), noise - x0)
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(self.cfg, self.step, self.optimiser_start)
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
        meta = (model.metadata(self.cfg.depth) | {k: str(v) for k, v in asdict(self.cfg).items()}
                | {"trained_steps": str(self.step)})
        tmp = self.out.with_suffix(".tmp")
        save_file({k: v.half().cpu().contiguous() for k, v in self.ema.items()}, str(tmp), metadata=meta)
        tmp.replace(self.out)
        state = {"model": self._state(), "ema": self.ema, "optimizer": self.opt.state_dict(),
                 "rng": self.gen.get_state(), "step": self.step, "settings": asdict(self.cfg),
                 "optimiser_start": self.optimiser_start, "seconds": self.seconds}
        torch.save(state, str(self.ckpt) + ".tmp")
        Path(str(self.ckpt) + ".tmp").replace(self.ckpt)


class _stop_requests:
    """While active, SIGINT and SIGTERM only mark a stop (the object is truthy afterwards): a step or a save is never
    cut in half (weights, optimiser, EMA and files stay consistent). Outside the main thread it does nothing."""

    def __enter__(self):
        self.requested, self._old = False, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._mark)
        return self

    def _mark(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    def __bool__(self):
        return self.requested


def _fixed(settings: dict) -> dict:
    """The settings a resumed run must share with its checkpoint: all but the step count and the cooldown (a
    time-boxed run re-plans both) and how often it saves."""
    return {k: v for k, v in settings.items() if k not in ("steps", "cooldown", "save_every")}


def plan_for_time(cfg: Settings, step: int, start: int, seconds_per_step: float, seconds_left: float,
                  cooldown_fraction: float) -> Settings:
    """Settings whose step count ends the run inside `seconds_left` (a time-boxed run, e.g. a lent GPU), with the
    last `cooldown_fraction` of the run's steps decaying the learning rate to 0."""
    steps = step + max(1, int(seconds_left / seconds_per_step))
    steps = min(steps, cfg.steps)
    return replace(cfg, steps=steps, cooldown=int(cooldown_fraction * (steps - start)))


class TimeBox:
    """--minutes: keeps a run's plan (its last step and cooldown, plan_for_time) inside the wall-clock budget of the
    whole run, resumed parts included. It re-plans on resume (from the run's average speed), after 100 and 600 steps
    of each part and every 1000 steps after that until the cooldown begins, each time from the speed since the
    previous plan, so that a slow start (another job on the machine, a warm-up) does not cut the run short. The
    cooldown itself is not re-planned (its learning rate would jump): a slowdown there overruns the budget a little
    (89 s of 175 minutes in the run the README reports)."""

    def __init__(self, cfg: Settings, trainer: "Trainer", minutes: float, cooldown_fraction: float):
        self.cfg, self.trainer, self.budget, self.fraction = cfg, trainer, minutes * 60, cooldown_fraction
        self.part_start, self.mark = trainer.step, (trainer.step, trainer.seconds)
        t = trainer
        if self.budget > 0 and t.step > t.optimiser_start and t.seconds > 0:  # a resumed part goes on with the plan
            self._replan(t.seconds / (t.step - t.optimiser_start))

    def _replan(self, seconds_per_step: float) -> None:
        t = self.trainer
        t.cfg = plan_for_time(self.cfg, t.step, t.optimiser_start, seconds_per_step,
                              self.budget - t.seconds - 15, self.fraction)
        log.info("time-boxed: %.2f s/step, %.0f of %.0f s used, planned to step %d with a %d-step cooldown",
                 seconds_per_step, t.seconds, self.budget, t.cfg.steps, t.cfg.cooldown)

    def after_step(self) -> None:
        t = self.trainer
        done = t.step - self.part_start
        stable = t.step < t.cfg.steps - t.cfg.cooldown
        if self.budget <= 0 or not (done in (100, 600) or (done > 600 and done % 1000 == 0 and stable)):
            return
        step0, seconds0 = self.mark
        self._replan((t.seconds - seconds0) / max(1, t.step - step0))
        self.mark = (t.step, t.seconds)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512 units, as oneDNN sees them). Without them bf16
    autocast is emulated: measured 35 s a step against float32's 1.2 s (batch 64, two threads, an AVX2-only AMD EPYC)."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if check is not None:
        try:
            return bool(check())
        except RuntimeError:
            pass
    return "AVX512" in torch.backends.cpu.get_cpu_capability()


def cpu_compiler() -> str | None:
    """The C++ compiler torch.compile would build CPU kernels with (inductor's choice: $CXX, else g++; clang++ on a
    Mac), where it is on PATH, or None."""
    import os
    import shutil
    import sys

    return shutil.which(os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++"))


def train(cfg: Settings, out: Path, init_from: Path | None = None, device: str = "cpu", minutes: float = 0.0,
          cooldown_fraction: float = 0.25, bf16: bool | None = None, compile: bool = False) -> Path:
    """Train to cfg.steps; with `minutes` > 0, stop inside that wall-clock budget for the whole run instead, counted
    over all its resumed parts (TimeBox: the cooldown still ends the run). bf16: autocast the model (default: on
    cuda only). compile: torch.compile the model (needs a C++ compiler on a CPU)."""
    if bf16 and device == "cpu" and not cpu_has_bf16():
        raise ValueError("--bf16: this CPU has no bfloat16 units (AMX or AVX512), so bf16 would run about 30x slower "
                         f"than float32 here (CPU capability {torch.backends.cpu.get_cpu_capability()}); leave out --bf16.")
    if compile and device == "cpu" and not cpu_compiler():
        raise ValueError("--compile: torch.compile builds C++ kernels on a CPU and no compiler ($CXX, else g++) is on "
                         "PATH; install one (e.g. apt install g++) or leave out --compile.")
    use_fast_attention()
    trainer = Trainer(cfg, out, device, bf16, compile)
    if init_from is not None and not trainer.ckpt.is_file():
        trainer.warm_start(init_from)
    trainer.resume()
    if trainer.step >= cfg.steps:
        raise ValueError(f"the model is already trained to step {trainer.step}; pass a larger --steps to train on")
    start, running = trainer.step, []
    box = TimeBox(cfg, trainer, minutes, cooldown_fraction)
    t_part, seconds_before = time.time(), trainer.seconds
    with _stop_requests() as stop:  # Ctrl-C / SIGTERM: the step (or save) in progress finishes, then save and stop
        while trainer.step < trainer.cfg.steps:
            running.append(trainer.train_step())
            trainer.seconds = seconds_before + time.time() - t_part
            if stop:
                trainer.save()
                log.info("stopped at step %d after %.0f s of training; saved: run the same command to go on",
                         trainer.step, trainer.seconds)
                raise SystemExit(130)
            box.after_step()
            if trainer.step % 50 == 0:
                el = time.time() - t_part
                left = el / (trainer.step - start) * (trainer.cfg.steps - trainer.step)
                log.info("step %d/%d  loss %.4f  lr %.2e  %.0fs elapsed (run %.0fs), ~%.0fs left", trainer.step,
                         trainer.cfg.steps, sum(running) / len(running), trainer.opt.param_groups[0]["lr"], el,
                         trainer.seconds, left)
                running = []
            if trainer.step % cfg.save_every == 0 or trainer.step == trainer.cfg.steps:
                trainer.save()
    log.info("saved %s (%.1f MB) after %d steps, %.0f s of training", out, out.stat().st_size / 1e6, trainer.step,
             trainer.seconds)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .safetensors file")
    for field, value in asdict(Settings()).items():
        ap.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    ap.add_argument("--init-from", type=Path, default=None,
                    help="without a checkpoint, continue from this weights file (e.g. the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a machine with a GPU (bf16 autocast there)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="stop inside this many minutes of wall clock for the whole run, resumed parts included "
                         "(--steps becomes an upper bound)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="autocast the model to bfloat16 (default: on cuda only). Fast on CPUs with AMX or "
                         "AVX512-BF16 (about 1.8x on one with AMX; 1.4x on an AMD EPYC with AVX512-BF16: 0.42 "
                         "against 0.57 s a step at --depth 3, batch 64, --compile, two threads); refused on CPUs "
                         "without bf16 units, where it is ~30x slower")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (needs a C++ compiler on a CPU): 0.94 against 1.10 s a step in a "
                         "short test at batch 64 on two threads of an AVX2 CPU; a 2-hour run there held 1.05-1.18 s")
    ap.add_argument("--cooldown-fraction", type=float, default=0.25,
                    help="with --minutes: the share of the run whose learning rate decays to 0")
    args = vars(ap.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.pop("threads"))
    out, init_from = args.pop("out"), args.pop("init_from")
    run = {k: args.pop(k) for k in ("device", "minutes", "cooldown_fraction", "bf16", "compile")}
    from tools import comfy_env

    log.info("training with %s", comfy_env.activate().describe())
    train(Settings(**args), out, init_from, **run)


if __name__ == "__main__":
    main()
