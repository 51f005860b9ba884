"""Train the toy-world text-to-image model (CPU, about 40 minutes on one thread) and save it as fp16 safetensors.

    python -m toy.train_toy --out toy/weights/toy_t2i.safetensors

Run from the repository root. Uses the ComfyUI that tools/comfy_env.py finds (COMFYUI_DIR, the ComfyUI this pack is
installed in, or notcomfy), because the model is ComfyUI's own UNetModel: what is trained here is exactly what
ComfyUI's samplers run. The text is dropped (empty prompt) for a fraction of the samples so that classifier-free
guidance works. Deterministic from --seed on one machine and thread count.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger("toy.train_toy")
DEFAULT_OUT = Path(__file__).resolve().parent / "weights" / "toy_t2i.safetensors"
STEPS = 6000
CAPTION_NOISE = 0.3
WARMUP = 50


def _allow_autograd_through_comfy_attention(unet: torch.nn.Module) -> None:
    """Older ComfyUI adds attention outputs in place (`x += n`) onto tensors LayerNorm saved for backward;
    feeding each norm a copy keeps autograd valid. No effect on the weights or on inference."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    for blk in unet.modules():
        if isinstance(blk, BasicTransformerBlock):
            for norm in (blk.norm1, blk.norm2, blk.norm3):
                norm.register_forward_pre_hook(lambda mod, args: tuple(a.clone() for a in args))


def noisy_captions(labels: torch.Tensor, noise: float, gen: torch.Generator) -> list[str]:
    """Prompts for [B, 3] labels where each attribute is, with probability `noise`, replaced by a random value
    (possibly the same): imperfect captions, as in real training data. The model's conditional distribution then
    follows the prompt only partly, and classifier-free guidance sharpens it back towards the prompt."""
    from . import data

    labels = labels.clone()
    for i, a in enumerate(data.ATTRIBUTES):
        swap = torch.rand(len(labels), generator=gen) < noise
        labels[swap, i] = torch.randint(data.NUM_CLASSES[a], (int(swap.sum()),), generator=gen)
    return [data.Attributes.from_label(lab).prompt for lab in labels.tolist()]


def train(out: Path, seed: int = 0, steps: int = STEPS, batch: int = 32, lr: float = 1.5e-3, uncond_prob: float = 0.15,
          caption_noise: float = CAPTION_NOISE, ema_decay: float = 0.995, log_every: int = 50,
          save_every: int = 0) -> dict:
    from . import data, model, pixels, text

    torch.manual_seed(seed)
    base = model.build()
    model.reset_parameters(base.diffusion_model, seed)
    unet = base.diffusion_model
    with torch.no_grad():  # start from a zero output (as SD's UNet does)
        unet.out[-1].weight.zero_()
        unet.out[-1].bias.zero_()
    torch.manual_seed(seed + 1)
    encoder = text.ToyTextEncoder()
    _allow_autograd_through_comfy_attention(unet)
    unet.train()
    params = list(unet.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    # Warm-up then a constant rate (the EMA does the averaging): a run cut at step k equals a run of --steps k.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))
    ema = {k: v.detach().clone() for k, v in list(unet.state_dict().items())}
    ema_text = {k: v.detach().clone() for k, v in encoder.state_dict().items()}

    sigmas = base.model_sampling.sigmas.float()
    gen = torch.Generator().manual_seed(seed + 2)
    t0, running = time.time(), []
    for step in range(steps):
        b = data.sample_batch(batch, gen)
        captions = noisy_captions(b.labels, caption_noise, gen) if caption_noise > 0 else b.prompts
        prompts = [p if float(torch.rand(1, generator=gen)) >= uncond_prob else "" for p in captions]
        x0 = pixels.to_latent(b.images)
        t = torch.randint(0, len(sigmas), (batch,), generator=gen)
        sigma = sigmas[t].view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        xc = (x0 + sigma * noise) / (sigma ** 2 + 1.0).sqrt()  # ComfyUI's EPS calculate_input
        tokens, _pooled = encoder(text.tokenize_batch(prompts))
        v = unet(xc, t.float(), context=tokens)
        # v-prediction (ComfyUI's V_PREDICTION): x0 = x/(σ²+1) − v·σ/√(σ²+1)  ⇔  v = (ε − σ·x0)/√(σ²+1)
        loss = torch.nn.functional.mse_loss(v, (noise - sigma * x0) / (sigma ** 2 + 1.0).sqrt())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(ema_decay, (step + 1) / (step + 10))
            for k, v in unet.state_dict().items():
                if v.is_floating_point():
                    ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    ema[k].copy_(v)
            for k, v in encoder.state_dict().items():
                ema_text[k].mul_(d).add_(v.detach(), alpha=1 - d)
        running.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            el = time.time() - t0
            log.info("step %d/%d  loss %.4f  %.0fs elapsed, ~%.0fs left", step + 1, steps,
                     sum(running) / len(running), el, el / (step + 1) * (steps - step - 1))
            running = []
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            _save(out.with_name(f"{out.stem}.step{step + 1}{out.suffix}"), ema, ema_text,
                  {"seed": seed, "steps": step + 1, "batch": batch, "lr": lr, "uncond_prob": uncond_prob,
                   "caption_noise": caption_noise})
    _save(out, ema, ema_text, {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "uncond_prob": uncond_prob,
                               "caption_noise": caption_noise})
    log.info("saved %s (%.1f MB) in %.0fs", out, out.stat().st_size / 1e6, time.time() - t0)
    return {"seconds": time.time() - t0, "path": str(out)}


def _save(path: Path, ema: dict, ema_text: dict, settings: dict) -> None:
    from safetensors.torch import save_file

    from . import model

    sd = {model.DIFFUSION_PREFIX + k: v.half().contiguous() for k, v in ema.items()}
    sd.update({model.TEXT_PREFIX + k: v.half().contiguous() for k, v in ema_text.items()})
    meta = model.metadata()
    meta.update({k: str(v) for k, v in settings.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .safetensors file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--caption-noise", type=float, default=CAPTION_NOISE,
                    help="chance that each attribute in a training prompt is replaced by a random one")
    ap.add_argument("--save-every", type=int, default=0, help="also save <out>.step<N>.safetensors every N steps")
    ap.add_argument("--uncond-prob", type=float, default=0.15, help="share of samples trained with the empty prompt")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest on a busy machine: idle-waiting threads thrash)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    from tools import comfy_env

    inst = comfy_env.activate()
    log.info("training with %s", inst.describe())
    train(args.out, seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, uncond_prob=args.uncond_prob,
          caption_noise=args.caption_noise, save_every=args.save_every)


if __name__ == "__main__":
    main()
