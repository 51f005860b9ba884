"""The start the toy world's command-line scripts share (evaluate, classifier, scenes evaluate and reader)."""
from __future__ import annotations

import argparse
import logging

import torch


def parse_and_set_up(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Add --threads, parse argv, then log at INFO with timestamps and run torch on that many CPU threads."""
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    return args
