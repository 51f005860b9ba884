"""Merge CoRe² datasets: what several machines collected into datasets of their own, joined into one.

    python -m core2.dataset_merge DEST SOURCE [SOURCE ...]

Every source is opened with the dataset reader (every file checked: damaged items are left out and named) and must
hold the same model and latent shape as DEST (or as the first source, when DEST does not exist yet). Prompts and
trajectories DEST lacks are copied in under DEST's writer lock (so a Collect may be writing into DEST meanwhile);
items DEST already holds intact are left as they are. Sources are only read. Plain torch, no ComfyUI.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .dataset import DatasetReader, DatasetWriter, header_mismatches, refuse_mismatch
from .files import read_regular

log = logging.getLogger(__name__)


def merge(dest: str | Path, sources: list) -> dict:
    """Copy into dest what the sources hold and dest lacks; returns counts per source."""
    readers = [DatasetReader(src) for src in sources]  # all checked before anything is written
    for r in readers[1:]:
        refuse_mismatch(header_mismatches(readers[0].header, r.header))
    DatasetWriter.check_compatible(dest, readers[0].header)
    writer = DatasetWriter(dest, readers[0].header)
    report = {}
    for r in readers:
        used = set(r.prompt_ids())  # prompts of intact items only
        prompts = sum(writer.copy_prompt(pid, e, read_regular(r.folder, e["file"], "prompt file"))
                      for pid, e in r.manifest["prompts"].items() if pid in used)
        items = sum(writer.copy_trajectory(it, read_regular(r.folder, it["shard"], "trajectory")) for it in r.items)
        for run in r.manifest.get("runs", []):
            writer.note_run(run)
        report[str(r.folder)] = {"prompts": prompts, "trajectories": items, "already_there": len(r.items) - items,
                                 "damaged_left_out": len(r.skipped)}
        log.info("merged %s: %d trajectories copied, %d already there, %d damaged left out", r.folder, items,
                 len(r.items) - items, len(r.skipped))
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", type=Path)
    ap.add_argument("sources", type=Path, nargs="+")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if any(s.resolve() == args.dest.resolve() for s in args.sources):
        raise SystemExit("core2.dataset_merge: a source is the destination itself; name another folder.")
    report = merge(args.dest, args.sources)
    total = sum(v["trajectories"] for v in report.values())
    print(f"{args.dest}: {total} trajectories added from {len(report)} dataset(s)")


if __name__ == "__main__":
    main()
