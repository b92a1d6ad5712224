"""`virnucpro run`: prepare -> embed every shard -> predict, in one process, resumable.

The output folder is locked while it runs and written only if it is empty, new or an earlier
`run` output. Intermediate files live in `OUTDIR/.virnucpro-work/`. A rerun after a kill skips a
finished prepare (same inputs, same chunk size, every table and shard as its manifest records them;
otherwise it is done again) and finished embedding shards, and resumes the interrupted shard from
its checkpoint. After success the work folder is removed (embeddings are
kept under `OUTDIR/embeddings/` with `--keep-embeddings`).
"""

from __future__ import annotations

import functools
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from virnucpro import __version__
from virnucpro import prepared as fmt
from virnucpro.console import info
from virnucpro.errors import (BadInputError, InterruptedByUser, OutputWriteError, StoppedWithNothingKept,
                              StoppedWithOutputsInPlace, VirnucproError, check_stop, output_errors, outputs_in_place,
                              printable, stop_arrived, stop_received, stop_signals_deferred)
from virnucpro.outdir import OutputFolder, check_work_folder, claim, is_regular, remove_written, work_pattern
from virnucpro.seqio import STDIN, unicode_text

WORK = ".virnucpro-work"
KEPT = "embeddings"
WORK_WHAT = "the run's work folder"
SHA256 = "[0-9a-f]" + "{64}"  # a checkpoint key folder's name, a part's checksum
OURS = r"\.virnucpro\.(?:json|lock)[^/]*"  # marker and lock files, their temporaries and stale names


@functools.cache
def _work_files() -> re.Pattern:
    """The relative paths `run` (through prepare and embed) writes in its work folder, folders too:
    only these are ever deleted there, and a work folder holding anything else is refused."""
    from virnucpro import embed

    prepared = "|".join(f"(?:{alternative})" for alternative in _prepare_alternatives())
    checkpoint_files = "|".join([embed.PART_NAME.pattern, embed.PART_TMP_NAME.pattern, OURS,
                                 rf"{re.escape(embed.WAITING_PREFIX)}[^/]*", re.escape(embed.IDENTITY_NAME),
                                 embed.IDENTITY_TMP_NAME.pattern, "lock"])  # lock: 0.1.0's, until Nov 30
    return work_pattern(
        rf"prepared(?:/(?:{prepared}))?",
        r"embeddings(?:/\.?shard_[0-9]+\.h5(?:\.[^/]*)?)?",  # the files, their locks and temporaries
        rf"checkpoints(?:/{SHA256}(?:/(?:{checkpoint_files}))?)?")


@functools.cache
def _prepare_files() -> re.Pattern:
    """The relative paths prepare writes in its folder (the work folder's `prepared`), folders too."""
    return work_pattern(*_prepare_alternatives())


def _prepare_alternatives() -> tuple[str, ...]:
    """Regular expressions of what prepare writes in its folder: tables, manifest, marker and lock,
    shards, its staging folder."""
    from virnucpro.prepare import STAGING, STAGING_FILES

    return (rf"{re.escape(fmt.SEQUENCES)}|{re.escape(fmt.CHUNKS)}|{re.escape(fmt.MANIFEST)}|{OURS}",
            rf"{fmt.SHARD_DIR}(?:/{fmt.SHARD_PATTERN})?",
            rf"{re.escape(STAGING)}(?:/(?:{STAGING_FILES.pattern}))?")


def _earlier_prepare(prepared: Path, inputs: Sequence[Path], chunk_size: int) -> tuple[dict | None, str]:
    """(its manifest, "") when `prepared` holds a finished prepare of exactly these input files (by
    content) at this chunk size, every table and shard as its manifest records them (their sha256);
    otherwise (None, why not): a damaged prepare is never reused, predict would refuse it hours later,
    nor one of another virnucpro version (one run's outputs come from one version)."""
    try:
        manifest = fmt.load_manifest(prepared)
        if manifest["virnucpro_version"] != __version__:  # its embeddings are never reused either
            return None, f"was made by virnucpro {printable(manifest['virnucpro_version'])}, not this {__version__}"
        if manifest["chunk_size"] != chunk_size:
            return None, f"was made at chunk size {manifest['chunk_size']}"
        if len(manifest["inputs"]) != len(inputs):
            return None, "was made from other input files"
        if not all(str(path) != STDIN and Path(path).is_file() for path in inputs):  # `-` is no file named so
            return None, "cannot be compared with input that is not a file (a pipe is read once)"
        if not all(fmt.sha256_of(Path(path)) == entry["sha256"] for path, entry in zip(inputs, manifest["inputs"])):
            return None, "was made from other input files"
        fmt.check_files(prepared, manifest)
    except InterruptedByUser:
        raise  # a stop is no damage: the finished prepare stays for the rerun
    except VirnucproError as exc:
        return None, f"cannot be reused: {exc.message}"
    return manifest, ""


@dataclass
class Setup:
    """Everything checked and loaded before hours of work: models, classifier, device, precision."""

    model_set: object
    classifier: Path
    classifier_model: object
    device: object
    precision: str
    compiling: object  # virnucpro.embed.Compiling


def _setup(models: Path | None, classifier: Path | None, chunk_size: int, torch_device, precision: str,
           offline: bool, compiling) -> Setup:
    from virnucpro.classifier import load_classifier
    from virnucpro.embed import resolve_precision
    from virnucpro.models import download, store
    from virnucpro.predict import refuse_classifier_of_other_chunk_size, refuse_classifier_unlike_its_record

    check_stop()  # a stop during torch's first import is only noted (torch catches every Exception there)
    given = None
    if classifier:  # the user's classifier first: a typo found after a multi-GB download wastes it
        refuse_classifier_unlike_its_record(Path(classifier), models)
        refuse_classifier_of_other_chunk_size(Path(classifier), chunk_size, models)
        given = load_classifier(Path(classifier))
    model_set = download.ensure(models, roles=_roles(classifier, chunk_size), offline=offline)
    store.refuse_out_of_reach([model_set.dnabert_s, model_set.esm2])
    if given is not None:
        _refuse_classifier_of_other_encoders(Path(classifier), models, model_set)
    classifier = Path(classifier) if classifier else model_set.classifier(chunk_size)
    return Setup(model_set, classifier, given if given is not None else load_classifier(classifier), torch_device,
                 resolve_precision(precision, torch_device), compiling)


def _refuse_classifier_of_other_encoders(classifier: Path, models: Path | None, model_set) -> None:
    """--classifier known to belong to other encoders than --models holds: exit 5 before any work."""
    from virnucpro.models.store import ENCODER_ROLES
    from virnucpro.predict import check_classifier_encoders

    check_classifier_encoders(classifier, models, {role: model_set.sha256[role] for role in ENCODER_ROLES},
                              f"the models folder {model_set.directory}, which this run embeds with, holds",
                              lambda where: f"give the classifier made for the models in {model_set.directory} (or "
                              f"leave --classifier out), or run with {where} (--models)")


def _roles(classifier: Path | None, chunk_size: int) -> list[str]:
    """The models `run` needs: both encoders, and the classifier for the chunk size unless given."""
    from virnucpro.embed import ROLES

    return list(ROLES) + ([] if classifier else [f"classifier_{chunk_size}"])


def _download_ahead(models: Path | None, classifier: Path | None, chunk_size: int, offline: bool) -> bool:
    """Whether setting up would download models (GBs): the inputs are then prepared first, which
    checks them to the last record, so a bad record never costs a download. Otherwise setting up
    goes first and says at once what is wrong with the models."""
    from virnucpro.models import download

    return download.will_download(models, _roles(classifier, chunk_size), offline)


def _prepare_once(inputs: list[Path], prepared: Path, chunk_size: int, outdir: Path) -> dict:
    """The prepare stage, or its finished result from an earlier try of this run (whose tables the
    user finds in `outdir`). An earlier prepare that cannot be reused is removed first, said why: the
    folder is the run's own, and prepare never replaces files that changed since it wrote them."""
    from virnucpro.prepare import prepare

    if prepared.is_dir():
        manifest, fault = _earlier_prepare(prepared, inputs, chunk_size)
        if manifest is not None:
            info(f"prepare: already done for these inputs ({prepared}), reusing it")
            return manifest
        info(f"prepare: redoing it: the earlier one in {prepared} {fault}")
        remove_written(prepared, _prepare_files())
    # in this process, no workers: a process that runs the models should not fork (on some virtual
    # machines a fork made later multi-threaded CPU math in the parent transiently wrong), and
    # prepare takes well under 1% of the time embedding takes
    try:
        manifest = prepare(inputs, prepared, chunk_size=chunk_size, threads=1, published_in=outdir)
        outputs_in_place(None)  # the prepare is whole, the run is not: a stop from here on asks for the rerun
        return manifest
    except StoppedWithOutputsInPlace:
        raise stop_received() from None


def _embedded_before(shard: Path, h5: Path, identity: dict, precision: str) -> bool:
    """Whether an earlier try of this run embedded `shard` into `h5` (checked as `embed` checks it)."""
    from virnucpro.embed import already_embedded

    if not h5.is_file():
        return False
    return already_embedded(h5, fmt.shard_info(shard), [record[0] for record in fmt.read_shard(shard)],
                            identity, precision)


def _embed_all(manifest: dict, prepared: Path, work: Path, setup: Setup, kept_in: Path | None,
               **options) -> list[Path]:
    """Every shard embedded (finished ones from an earlier try reused); returns the HDF5 paths.
    `kept_in`: where the embeddings are published on success (--keep-embeddings), else None."""
    from virnucpro.embed import ROLES, embed, embedding_widths, unloaded_widths
    from virnucpro.predict import check_classifier_fits

    identity = setup.model_set.identity(ROLES)
    embeddings = [work / "embeddings" / Path(shard["file"]).with_suffix(".h5").name for shard in manifest["shards"]]
    pending = {h5 for shard, h5 in zip(manifest["shards"], embeddings)
               if not _embedded_before(prepared / shard["file"], h5, identity, setup.precision)}
    if pending:  # loads the models when a shard has records: the first embed needs them anyway
        computing = any(shard["records"] for shard, h5 in zip(manifest["shards"], embeddings) if h5 in pending)
        widths = (embedding_widths(setup.model_set, setup.device, setup.precision, setup.compiling) if computing
                  else unloaded_widths(setup.model_set))
        check_classifier_fits(setup.classifier_model, setup.classifier, widths)
    for shard, h5 in zip(manifest["shards"], embeddings):
        if h5 not in pending:
            info(f"embed: {h5.name} already done, reusing it")
            continue
        _forget_if_damaged(h5)
        embed(prepared / shard["file"], h5, checkpoint_dir=work / "checkpoints", device=setup.device.type,
              precision=setup.precision, model_set=setup.model_set, compiling=setup.compiling,
              reported_as=_where_embeddings_end(h5, kept_in), **options)
    return embeddings


def _refuse_models_out_of_reach(models: Path | None) -> None:
    """A models folder the libraries cannot take by name (`store.refuse_out_of_reach`) is exit 4 before
    a prepare, and before a download into it."""
    from virnucpro.models import store

    store.refuse_out_of_reach([store.models_dir(models)])


def _forget_if_damaged(h5: Path) -> None:
    """Remove an embedding file of the run's own work folder that is not as embed sealed it (nobody else
    writes there: damaged, its seal included, or emptied), said so, for embed to compute it again; embed
    itself replaces no such file, which elsewhere may hold what a user added. Only a file itself, in
    the folder itself: never a link's target."""
    from virnucpro import h5shard

    if is_regular(h5) and not h5.parent.is_symlink() and not (h5shard.is_sealed_shard(h5) and h5shard.seal_holds(h5)):
        info(f"embed: {h5.name} changed since embed wrote it (damaged): computing it again")
        h5.unlink()


def _where_embeddings_end(h5: Path, kept_in: Path | None) -> str:
    """How a shard's closing line names its embeddings: never by their path in the work folder, which
    is removed when the run succeeds, but by where they are published then, or as intermediate."""
    if kept_in is not None:
        return f"-> {kept_in / h5.name} (published there when the run succeeds)"
    return "(intermediate: removed when the run succeeds; --keep-embeddings keeps them)"


def _refuse_folders_out_of_place(cache: Path | None, outdir: Path, models: Path | None) -> None:
    """At start-up: a models folder the libraries cannot take by name (`_refuse_models_out_of_reach`),
    and a --compile-cache that is --outdir or inside it (exit 3: a cache outlives the run, which owns
    its folder; on a GPU it was refused only once the models loaded, after prepare)."""
    _refuse_models_out_of_reach(models)
    if cache is None:
        return
    real, output = Path(os.path.realpath(cache)), Path(os.path.realpath(outdir))
    if real == output or output in real.parents:
        raise BadInputError(f"--compile-cache {cache} {'is' if real == output else 'is inside'} --outdir {outdir}: "
                            "the cache is kept for later runs, the output folder is this run's alone",
                            "choose a cache folder outside the output folder (or leave --compile-cache out)")


def run(inputs: Sequence[Path], outdir: Path, chunk_size: int = 500, models: Path | None = None,
        classifier: Path | None = None, device: str = "auto", precision: str = "auto",
        keep_embeddings: bool = False, offline: bool = False, threads: int | None = None,
        threshold: float = 0.5, token_budget: int | None = None, checkpoint_every: int = 2000,
        checkpoint_seconds: float = 600.0, compiling=None) -> Path:
    """All stages for one sample; returns the output directory (`compiling`: virnucpro.embed.Compiling).

    Everything that can be checked before hours of work is checked first: the inputs, the output
    directory (the compile cache outside it), torch's cache folder, the models (their folder's name
    first) and the classifier; models to download come after a prepare (which checks every record)."""
    from virnucpro.prepare import check_inputs

    inputs, outdir = [Path(p) for p in inputs], Path(outdir)
    _refuse_folders_out_of_place(compiling.cache if compiling is not None else None, outdir, models)
    check_inputs(inputs, work_folders=[outdir / WORK])
    with claim(outdir, "run", _outputs()) as output, output_errors(outdir), _work_kept_if_resumable(outdir / WORK):
        from virnucpro.embed import Compiling

        torch_device = _device_settled(device, compiling or Compiling())

        def set_up() -> Setup:
            return _setup(models, classifier, chunk_size, torch_device, precision, offline, compiling or Compiling())

        setup = None if _download_ahead(models, classifier, chunk_size, offline) else set_up()
        work = outdir / WORK
        started = time.monotonic()
        manifest = _prepare_once(inputs, work / "prepared", chunk_size, outdir)
        seconds: dict[str, float] = {"prepare": round(time.monotonic() - started, 3)}
        _say_earlier_results_replaced(outdir, manifest, threshold)
        setup = setup or set_up()
        started = time.monotonic()
        embeddings = _embed_all(manifest, work / "prepared", work, setup, outdir / KEPT if keep_embeddings else None,
                                token_budget=token_budget, threads=threads, checkpoint_every=checkpoint_every,
                                checkpoint_seconds=checkpoint_seconds)
        seconds["embed"] = round(time.monotonic() - started, 3)
        _predict_and_publish(output, work, embeddings, setup, threshold, seconds, keep_embeddings,
                             [unicode_text(str(path)) for path in inputs])
        with stop_signals_deferred():  # the outputs are in place: a stop waits until the work folder is gone
            remove_written(work, _work_files())
    return outdir


def _say_earlier_results_replaced(outdir: Path, manifest: dict, threshold: float) -> None:
    """Once the inputs are read (their sha256 known), say that the finished results of an earlier run
    in `outdir` are replaced when this run succeeds, and what differs (inputs, chunk size, threshold)."""
    import json

    from virnucpro.predict import RUN_INFO

    try:
        earlier = json.loads((outdir / RUN_INFO).read_text("utf-8"))
        inputs = [entry["sha256"] for entry in earlier["inputs"]]
        options = {"chunk size": earlier["chunk_size"], "threshold": earlier["threshold"]}
    except (OSError, ValueError, TypeError, KeyError):
        return  # no earlier run's results (or none that can be read): nothing to compare with
    differences = [] if inputs == [entry["sha256"] for entry in manifest["inputs"]] else ["other inputs"]
    wanted = {"chunk size": manifest["chunk_size"], "threshold": threshold}
    differences += [f"{name} {printable(str(value))}, not {wanted[name]}" for name, value in options.items()
                    if value != wanted[name]]
    why = (f"inputs or options differ: {'; '.join(differences)}" if differences  # models are not compared
           else "same inputs, chunk size and threshold: computed again, with this run's models and settings")
    info(f"replacing the earlier run's results in {outdir} when this run succeeds ({why})")


def _device_settled(device: str, compiling):
    """The torch device, its cache folder settled (`embed.settle_torch_cache`: a temporary folder on the
    CPU): no GPU for --device cuda, or no temporary folder (exit 10), is said before a prepare or a download."""
    from virnucpro.embed import resolve_device, settle_torch_cache

    torch_device = resolve_device(device)
    settle_torch_cache(torch_device, compiling)
    return torch_device


@contextmanager
def _work_kept_if_resumable(work: Path) -> Iterator[None]:
    """On failure, keep the work folder only when it holds work a rerun resumes from: embeddings or
    checkpoints, or, when stopped by a signal (which says finished work is kept), a finished
    prepare; otherwise remove what this run wrote there (a failed run in a new folder then leaves
    nothing behind). A work folder that is a link, or holds files a run never writes, is refused."""
    check_work_folder(work, _work_files(), WORK_WHAT)
    try:
        yield
    except StoppedWithOutputsInPlace:  # the outputs are complete: the work folder goes as after a success
        with stop_signals_deferred():
            remove_written(work, _work_files())
        raise
    except BaseException as exc:
        stopped = isinstance(exc, InterruptedByUser) or stop_arrived()  # a library may have wrapped the stop
        embedded = [p for p in (work / "embeddings", work / "checkpoints") if p.is_dir() and any(p.rglob("*"))]
        prepared = stopped and (work / "prepared" / fmt.MANIFEST).is_file()
        if not embedded and not prepared:
            remove_written(work, _work_files())
        kept_nothing = not embedded and not prepared
        if stopped and (not isinstance(exc, InterruptedByUser) or kept_nothing != isinstance(exc, StoppedWithNothingKept)):
            raise stop_received(keeping_nothing=kept_nothing) from None  # the stop says what the rerun finds
        raise


def _outputs() -> tuple[str, ...]:
    from virnucpro.predict import OUTPUTS

    return (KEPT, *OUTPUTS)


def _drop_other_embeddings(folder: Path, current: list[Path]) -> None:
    """Only this run's shards are published: what an earlier attempt left in the work folder's
    embeddings (shards of other inputs or of more shards, lock leftovers) is removed; the work folder
    holds only files runs write (`check_work_folder`)."""
    keep = {path.name for path in current}
    for path in folder.iterdir():
        if path.name not in keep and is_regular(path):
            path.unlink()


@contextmanager
def _resumed_after_a_lack_of_space(work: Path) -> Iterator[None]:
    """Predict's failure for lack of space (every shard of this run embedded, kept in `work`): its fix
    says that a rerun into the same folder, once there is space, resumes from those embeddings."""
    try:
        yield
    except OutputWriteError as error:
        if error.lack_of_space:
            error.hint = f"{error.hint}; a rerun with the same --outdir then resumes from the embeddings kept in {work}"
        raise


def _predict_and_publish(output: OutputFolder, work: Path, embeddings: list[Path], setup: Setup,
                         threshold: float, seconds: dict, keep_embeddings: bool, input_names: list[str]) -> None:
    """The predict stage into the run's folder, its outputs naming the inputs as this run was given
    them; the embeddings published with them when asked to keep them (an earlier run's removed
    otherwise), in the same move."""
    from virnucpro.predict import predict

    if keep_embeddings:
        _drop_other_embeddings(work / KEPT, embeddings)
        output.with_next_publish(work, [KEPT])
    else:
        output.with_next_publish(None, [KEPT])
    with _resumed_after_a_lack_of_space(work):
        predict(work / "prepared", embeddings, output.folder, classifier=setup.classifier, threshold=threshold,
                stage_seconds=seconds, output=output, input_names=input_names, loaded_classifier=setup.classifier_model)
    if keep_embeddings:
        info(f"embeddings kept in {output.folder / KEPT}")
