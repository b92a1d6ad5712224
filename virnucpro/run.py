"""`virnucpro run`: prepare -> embed every shard -> predict, in one process, resumable.

Intermediate files live in `OUTDIR/.virnucpro-work/` while it runs. A rerun after a kill skips a
finished prepare (same inputs, same chunk size) and finished embedding shards, and resumes the
interrupted shard from its checkpoint. After success the work folder is removed (embeddings are
kept under `OUTDIR/embeddings/` with `--keep-embeddings`).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Sequence

from virnucpro import h5shard
from virnucpro import prepared as fmt
from virnucpro.console import info
from virnucpro.errors import BadInputError, VirnucproError, make_output_dir

WORK = ".virnucpro-work"
KEPT_NAME = re.compile(r"shard_\d+\.h5")


def _prepare_is_current(prepared: Path, inputs: Sequence[Path], chunk_size: int) -> bool:
    """A finished prepare of exactly these input files (by content) at this chunk size."""
    try:
        manifest = fmt.load_manifest(prepared)
    except VirnucproError:
        return False
    if manifest["chunk_size"] != chunk_size or len(manifest["inputs"]) != len(inputs):
        return False
    return all(Path(path).is_file() and fmt.sha256_of(Path(path)) == entry["sha256"]
               for path, entry in zip(inputs, manifest["inputs"]))


def _embedding_is_current(h5: Path, shard: dict, models: dict, precision: str) -> bool:
    """A finished embedding of this shard with these models at this precision."""
    if not h5.exists():
        return False
    try:
        info_ = h5shard.read_info(h5)
    except VirnucproError:
        return False
    return info_.shard_sha256 == shard["sha256"] and info_.models == models and info_.precision == precision


def run(inputs: Sequence[Path], outdir: Path, chunk_size: int = 500, models: Path | None = None,
        classifier: Path | None = None, device: str = "auto", precision: str = "auto",
        keep_embeddings: bool = False, offline: bool = False, threads: int | None = None,
        threshold: float = 0.5, token_budget: int | None = None, checkpoint_every: int = 2000,
        checkpoint_seconds: float = 600.0) -> Path:
    """All stages for one sample; returns the output directory.

    Everything that can be checked before hours of work is checked first: the inputs (before any
    model download), the output directory, the models and the classifier.
    """
    from virnucpro import store
    from virnucpro.classifier import load_classifier
    from virnucpro.embed import ROLES, embed, embedding_widths, resolve_device, resolve_precision
    from virnucpro.predict import check_classifier_fits, predict
    from virnucpro.prepare import check_inputs, prepare

    inputs = [Path(p) for p in inputs]
    outdir = Path(outdir)
    work = outdir / WORK
    prepared = work / "prepared"
    kept = outdir / "embeddings"
    seconds: dict[str, float] = {}

    check_inputs(inputs)
    make_output_dir(outdir, "--outdir")
    if keep_embeddings:
        _check_kept_folder(kept)
    roles = list(ROLES) + ([] if classifier else [f"classifier_{chunk_size}"])
    model_set = store.ensure(models, roles=roles, offline=offline)
    classifier = Path(classifier) if classifier else model_set.classifier(chunk_size)
    classifier_model = load_classifier(classifier)
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    identity = model_set.identity(ROLES)

    started = time.monotonic()
    if _prepare_is_current(prepared, inputs, chunk_size):
        info(f"prepare: already done for these inputs ({prepared}), reusing it")
        manifest = fmt.load_manifest(prepared)
    else:
        # in this process, no workers: a process that runs the models should not fork (on some
        # virtual machines a fork made later multi-threaded CPU math in the parent transiently
        # wrong), and prepare takes well under 1% of the time embedding takes
        manifest = prepare(inputs, prepared, chunk_size=chunk_size, threads=1)
    seconds["prepare"] = round(time.monotonic() - started, 3)

    started = time.monotonic()
    embeddings = [work / "embeddings" / Path(shard["file"]).with_suffix(".h5").name for shard in manifest["shards"]]
    pending = {h5 for shard, h5 in zip(manifest["shards"], embeddings)
               if not _embedding_is_current(h5, shard, identity, precision)}
    if pending:  # loads the models, which the first embed needs anyway
        check_classifier_fits(classifier_model, classifier, embedding_widths(model_set, torch_device, precision))
    for shard, h5 in zip(manifest["shards"], embeddings):
        if h5 not in pending:
            info(f"embed: {h5.name} already done, reusing it")
            continue
        embed(prepared / shard["file"], h5, checkpoint_dir=work / "checkpoints", device=torch_device.type,
              precision=precision, token_budget=token_budget, threads=threads, model_set=model_set,
              checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds)
    seconds["embed"] = round(time.monotonic() - started, 3)

    predict(prepared, embeddings, outdir, classifier=classifier, threshold=threshold, stage_seconds=seconds)
    if keep_embeddings:
        shutil.rmtree(kept, ignore_errors=True)
        shutil.move(str(work / "embeddings"), kept)
        info(f"embeddings kept in {kept}")
    shutil.rmtree(work, ignore_errors=True)
    return outdir


def _check_kept_folder(kept: Path) -> None:
    """`--keep-embeddings` replaces OUTDIR/embeddings: only when it holds nothing but our shards."""
    if not kept.exists():
        return
    foreign = [p.name for p in kept.iterdir() if not KEPT_NAME.fullmatch(p.name)] if kept.is_dir() else [kept.name]
    if foreign:
        raise BadInputError(f"{kept} exists and holds files virnucpro did not write there ({', '.join(foreign[:3])}); "
                            "--keep-embeddings would replace it", "move those files, or choose another --outdir")
