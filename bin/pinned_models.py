#!/usr/bin/env python3
"""The tasks' guard against models that change while a pipeline run goes on.

    pinned_models.py --pins JSON --models DIR        EMBED, before: DIR still records the pinned encoders
    pinned_models.py --pins JSON --embedding X.h5    EMBED, after: X.h5 was made with the pinned encoders
    pinned_models.py --classifier-sha256 HEX --run-info DIR/run_info.json
                                                     PREDICT, after: it scored with the pinned classifier

The pipeline reads the models manifest once, when the run starts: the encoders' entries it records
(files and sha256, JSON of role -> entry: the pins) are part of every EMBED task's cache key. A task
that started later could read other weights (a shared folder updated during a long run), and its
embeddings were then kept under the start's key: the run published samples made with two model
sets, and a -resume after the folder was put back reused them. Each task therefore checks the
folder before embedding and the embedding it wrote against the pins, exit 5 with one message when
either differs (the task fails, so nothing is cached under the wrong key). An encoder the pins
cannot tell (no manifest, no sha256 recorded: a hand-staged folder) is not checked. The classifier
is pinned by the sha256 of its file, read when the run starts (a few MB), and checked against the
one predict records in run_info.json. Run by virnucpro's own Python (bin/virnucpro_python): it
reads the identities as virnucpro computes them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from virnucpro import h5shard
from virnucpro.console import error
from virnucpro.errors import InconsistentInputsError, VirnucproError
from virnucpro.models import store

RELAUNCH = ("launch the pipeline again once the models folder stays as it is (with -resume, the shards "
            "embedded with the earlier models are embedded again): a run never mixes two model sets")


def pinned_identities(pins: str) -> dict[str, str]:
    """role -> identity the pins record, for each encoder they can tell."""
    try:
        entries = json.loads(pins)
    except ValueError:
        entries = None
    if not isinstance(entries, dict):
        raise InconsistentInputsError(f"--pins is not JSON of role -> manifest entry: {pins[:80]!r}",
                                      "report this: the pipeline writes the pins")
    found = {}
    for role in store.ENCODER_ROLES:
        identity = store.entry_identity(role, _entry(entries.get(role)))
        if identity is not None:
            found[role] = identity
    return found


def _entry(entry: object) -> dict | None:
    """A manifest entry as `store.entry_identity` takes it, or None when it names no files."""
    if not isinstance(entry, dict):
        return None
    files, sha256 = entry.get("files"), entry.get("sha256")
    if not (isinstance(files, list) and files and all(isinstance(f, str) for f in files)):
        return None
    sha256 = sha256 if isinstance(sha256, dict) else {}
    return {"files": files, "sha256": {rel: d for rel, d in sha256.items() if isinstance(d, str)}}


def check_folder(pinned: dict[str, str], models: Path) -> None:
    """The models folder still records the pinned encoders (exit 5 otherwise)."""
    for role, identity in pinned.items():
        now = store.recorded_identity(models, role)
        if now != identity:
            recorded = f"records {role} {now[:12]}..." if now else f"no longer records {role}'s checksums"
            raise InconsistentInputsError(
                f"the models folder {models} changed since this pipeline run started: its manifest now "
                f"{recorded}, the run started with {identity[:12]}...", RELAUNCH)


def check_embedding(pinned: dict[str, str], h5: Path) -> None:
    """The embedding was made with the pinned encoders (exit 5 otherwise)."""
    if not pinned:
        return  # nothing pinned (a folder without a manifest): the file is predict's to check
    made = h5shard.read_info(h5).models
    for role, identity in pinned.items():
        used = str((made.get(role) or {}).get("sha256", "")).lower()
        if used != identity:
            raise InconsistentInputsError(
                f"{h5} was embedded with {role} {used[:12]}..., not the {identity[:12]}... this pipeline run "
                "started with: the models folder changed during the run", RELAUNCH)


def check_classifier(sha256: str, run_info: Path) -> None:
    """Predict scored with the classifier whose file had `sha256` when the run started (exit 5 otherwise)."""
    try:
        used = json.loads(run_info.read_text(encoding="utf-8"))["classifier"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InconsistentInputsError(f"cannot read the classifier's sha256 from {run_info}: {exc}",
                                      "report this: virnucpro predict writes it") from None
    if str(used).lower() != sha256.lower():
        raise InconsistentInputsError(
            f"predict scored with the classifier {str(used)[:12]}..., not the {sha256[:12]}... this pipeline run "
            "started with: the classifier changed during the run",
            "launch the pipeline again once the classifier stays as it is (with -resume, the samples scored "
            "with the earlier one are scored again): a run never mixes two classifiers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pins", default="{}", help="JSON of role -> manifest entry, read at the run's start")
    parser.add_argument("--models", type=Path, help="the models folder the task reads")
    parser.add_argument("--embedding", type=Path, help="the embedding file the task wrote")
    parser.add_argument("--classifier-sha256", default="", help="of the classifier file, read at the run's start")
    parser.add_argument("--run-info", type=Path, help="the run_info.json predict wrote")
    args = parser.parse_args(argv)
    try:
        pinned = pinned_identities(args.pins)
        if args.models is not None:
            check_folder(pinned, args.models)
        if args.embedding is not None:
            check_embedding(pinned, args.embedding)
        if args.run_info is not None and args.classifier_sha256:
            check_classifier(args.classifier_sha256, args.run_info)
    except VirnucproError as exc:
        error(str(exc))
        return int(exc.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
