"""The toy worlds' judges (the shapes classifier, the scenes reader): their training loop, and saving and loading them
as safetensors with a format tag, loaded once per path. Plain torch."""
from __future__ import annotations

from pathlib import Path

import torch

_CACHE: dict[tuple, torch.nn.Module] = {}


def fit(net: torch.nn.Module, batch_fn, fields, steps: int, lr: float, seed: int, log, every: int) -> torch.nn.Module:
    """Train a judge with one cross-entropy per field (Adam, one-cycle schedule): batch_fn(gen) -> (pictures,
    [B, len(fields)] targets); logs every `every` steps. Returns the net in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        images, target = batch_fn(gen)
        logits = net(images)
        loss = sum(torch.nn.functional.cross_entropy(logits[f], target[:, i]) for i, f in enumerate(fields))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % every == 0:
            log("step %d/%d loss %.4f", step + 1, steps, float(loss.detach()))
    return net.eval()


def save(net: torch.nn.Module, path: Path, fmt: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata={"format": fmt})


def load(cls, path, fmt: str, what: str, train_command: str) -> torch.nn.Module:
    """The net of class `cls` in `path` (in eval mode, cached), after checking the file's format tag."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    key = (fmt, str(path))
    if key not in _CACHE:
        if not path.is_file():
            raise FileNotFoundError(f"no {what} at {path}; train one with `{train_command}`")
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("format") != fmt:
                raise ValueError(f"{path} is not a {what} (no format={fmt} metadata)")
        net = cls()
        net.load_state_dict(load_file(str(path)))
        _CACHE[key] = net.eval()
    return _CACHE[key]
