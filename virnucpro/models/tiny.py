"""`virnucpro models tiny DIR`: seeded random models in the real on-disk formats and key names.

Tests and the Nextflow test profile run every stage with them in seconds. The output is
byte-identical on every run and the manifest marks every role `"tiny": true`, so every output
made with them says so.

The files are made in a private temporary folder first. Then the manifest is written (the sha256
of every file is known from its bytes), then each file beside its final name under an exclusive
temporary name, renamed into place: an interrupted or failed run leaves no half-written file and
never model files without their manifest, so the folder is a folder of tiny models with files
missing, which every hint sends to `models tiny DIR` (rerunning it completes the folder). A full
disk where the files are made (TMPDIR) is exit 10 saying so, not torch's words for it. A name in the way that virnucpro did
not write (a symbolic link, a folder, a file the manifest does not record as a tiny model and whose
bytes are not the tiny model's) is never replaced (exit 3); a storage failure is exit 10.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from virnucpro import __version__
from virnucpro.console import info
from virnucpro.errors import (STORAGE_ERRNOS, BadInputError, ModelsError, OutputWriteError, output_errors,
                              outputs_in_place, stop_signals_deferred, storage_error)
from virnucpro.models import store
from virnucpro.outdir import OURS, file_mode, held_folder, refuse_nesting, write_atomically

TINY_SEED = 20240917
TINY_ESM = {"layers": 2, "embed_dim": 32, "heads": 4}
TINY_DNABERT = {"hidden_size": 48, "num_attention_heads": 12, "num_hidden_layers": 2,
                "intermediate_size": 96, "vocab_size": 64}
TINY_FILES = {
    "esm2": ["esm2_tiny.pt", "esm2_tiny-contact-regression.pt"],
    "dnabert_s": ["DNABERT-S-tiny/config.json", "DNABERT-S-tiny/model.safetensors",
                  "DNABERT-S-tiny/tokenizer.json", "DNABERT-S-tiny/tokenizer_config.json",
                  "DNABERT-S-tiny/special_tokens_map.json"],
    "classifier_300": ["300_model_tiny.pth"],
    "classifier_500": ["500_model_tiny.pth"],
}
TINY_NAMES = {"esm2": "esm2_tiny", "dnabert_s": "DNABERT-S-tiny",
              "classifier_300": "300_model_tiny.pth", "classifier_500": "500_model_tiny.pth"}
DNABERT_SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


def _esm_checkpoint_key(key: str) -> str:
    """fair-esm state_dict name -> the name in the published fairseq checkpoint."""
    if key.startswith("lm_head."):
        return "encoder." + key
    return "encoder.sentence_encoder." + key


def _tiny_esm(directory: Path, generator) -> None:
    """A tiny random fair-esm ESM2 written as the real checkpoint pair: the weights and the contact regression."""
    import torch
    from esm.data import Alphabet
    from esm.model.esm2 import ESM2

    model = ESM2(num_layers=TINY_ESM["layers"], embed_dim=TINY_ESM["embed_dim"],
                 attention_heads=TINY_ESM["heads"], alphabet=Alphabet.from_architecture("ESM-1b"),
                 token_dropout=True)
    weights, regression = {}, {}
    embed = None
    for key, value in model.state_dict().items():
        if key.endswith("rot_emb.inv_freq"):
            tensor = value.clone()  # the real checkpoint stores the standard frequencies
        elif key == "lm_head.weight":
            continue  # tied to embed_tokens.weight, filled below
        else:
            tensor = _random_like(key, tuple(value.shape), generator)
        if key == "embed_tokens.weight":
            embed = tensor
        if key.startswith("contact_head."):
            regression[key] = tensor
        else:
            weights[_esm_checkpoint_key(key)] = tensor
    weights[_esm_checkpoint_key("lm_head.weight")] = embed.clone()
    d, heads = TINY_ESM["embed_dim"], TINY_ESM["heads"]
    cfg = argparse.Namespace(
        _name="ESM2", arch="esm2", encoder_layers=TINY_ESM["layers"], encoder_embed_dim=d,
        encoder_ffn_embed_dim=4 * d, encoder_attention_heads=heads, token_dropout=True,
        dropout=0.0, attention_dropout=0.0, max_positions=1024, note="virnucpro tiny random model")
    torch.save({"model": weights, "cfg": {"model": cfg}}, str(directory / TINY_FILES["esm2"][0]))
    torch.save({"model": regression}, str(directory / TINY_FILES["esm2"][1]))


def _random_like(key: str, shape: tuple[int, ...], generator):
    """Seeded random weights spread enough that different inputs give visibly different outputs."""
    import torch

    name = key.rsplit(".", 1)[-1]
    is_norm = "norm" in key.lower() or "LayerNorm" in key
    if name == "weight" and is_norm:
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if name == "bias" or len(shape) == 1:
        return 0.1 * torch.randn(shape, generator=generator)
    fan_in = shape[-1] if len(shape) > 1 else 1
    std = 1.0 if "embed" in key.lower() else fan_in ** -0.5
    return std * torch.randn(shape, generator=generator)


def _tiny_dnabert_config() -> dict:
    """The real DNABERT-S config.json keys, with the sizes shrunk."""
    return {
        "_name_or_path": "zhihan1996/DNABERT-2-117M",
        "alibi_starting_size": 512,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModel": "bert_layers.BertModel",
            "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
            "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
        },
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TINY_DNABERT["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": TINY_DNABERT["intermediate_size"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": TINY_DNABERT["num_attention_heads"],
        "num_hidden_layers": TINY_DNABERT["num_hidden_layers"],
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": TINY_DNABERT["vocab_size"],
    }


def dnabert_key_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a DNABERT-S `BertModel` state_dict for this config."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (v, h),
        "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        shapes.update({
            p + "attention.self.Wqkv.weight": (3 * h, h),
            p + "attention.self.Wqkv.bias": (3 * h,),
            p + "attention.output.dense.weight": (h, h),
            p + "attention.output.dense.bias": (h,),
            p + "attention.output.LayerNorm.weight": (h,),
            p + "attention.output.LayerNorm.bias": (h,),
            p + "mlp.gated_layers.weight": (2 * i, h),
            p + "mlp.wo.weight": (h, i),
            p + "mlp.wo.bias": (h,),
            p + "mlp.layernorm.weight": (h,),
            p + "mlp.layernorm.bias": (h,),
        })
    shapes["pooler.dense.weight"] = (h, h)
    shapes["pooler.dense.bias"] = (h,)
    return shapes


def _tiny_tokenizer(vocab_size: int, seed: int):
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    corpus = ["".join(rng.choice("ACGT") if rng.random() > 0.02 else "N"
                      for _ in range(rng.randint(60, 400))) for _ in range(300)]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(DNABERT_SPECIAL_TOKENS),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    ids = {tok: tokenizer.token_to_id(tok) for tok in DNABERT_SPECIAL_TOKENS}
    assert list(ids.values()) == [0, 1, 2, 3, 4], ids
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return tokenizer


def _tiny_dnabert(folder: Path, generator) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = _tiny_dnabert_config()
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {key: _random_like(key, shape, generator).contiguous()
               for key, shape in dnabert_key_shapes(config).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(folder / "model.safetensors", file_mode())
    tokenizer = _tiny_tokenizer(config["vocab_size"], TINY_SEED)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "cls_token": "[CLS]", "mask_token": "[MASK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 1000000000000000019884624838656,
         "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True},
        indent=2) + "\n")


def _tiny_classifier(path: Path, input_dim: int, generator) -> None:
    import torch

    from virnucpro.classifier import MLPClassifier, save_original_way

    model = MLPClassifier(input_dim, 512, 2)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(1000)
            elif name == "bn1.weight":
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.is_floating_point():
                tensor.copy_(_random_like(f"mlp.{name}", tuple(tensor.shape), generator))
    save_original_way(model.eval(), path)


def _tiny_name(name: str) -> bool:
    """Whether a top-level entry is one `models tiny` writes (or its temporary file, or a lock)."""
    ours = {Path(rel).parts[0] for rels in TINY_FILES.values() for rel in rels} | {store.MANIFEST, store.HASH_CACHE}
    if name in ours or name in OURS:
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{own}.") for own in ours)


def _refuse_other_models(directory: Path) -> None:
    """Tiny models go only into a new or empty folder, or one of tiny models (an interrupted run's
    included): never over real models or other files, whose roles the manifest would silently
    repoint (exit 3)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise BadInputError(f"{directory} is a file, not a models folder", "give a new or empty folder")
    names = [entry.name for entry in directory.iterdir()]
    if all(name in OURS for name in names):  # empty but for a lock
        return
    roles = _manifest_roles(directory)
    kept = [role for role, entry in roles.items() if not entry.get("tiny")]
    if not kept and (roles or all(_tiny_name(name) for name in names)):
        return
    what = f"models that are not tiny ({', '.join(kept)})" if kept else "files that are not tiny models"
    raise BadInputError(f"{directory} holds {what}: `models tiny` would repoint them to random test models",
                        "give a new or empty folder for the tiny models")


def _manifest_roles(directory: Path) -> dict:
    """The roles of the folder's models manifest (none without one); a manifest that cannot be
    read is exit 4, with a hint that leaves the folder as it is."""
    try:
        return (store.read_manifest(directory, store.TINY_ARGUMENT) or {}).get("models") or {}
    except ModelsError as exc:
        raise ModelsError(exc.message, hint="give a new or empty folder for the tiny models") from None


def make_tiny(directory: Path) -> None:
    """`virnucpro models tiny DIR`: seeded random models in the real on-disk formats and key names.

    ESM-2 (2 layers, width 32) as a fair-esm `.pt` plus its contact-regression file, DNABERT-S
    (2 layers, width 48, 12 heads) as a Hugging Face folder with a BPE tokenizer trained on random
    DNA, and both classifiers pickled the original way with input width 48 + 32 = 80.
    The manifest marks every role `"tiny": true`. Deterministic: same bytes on every run.
    The folder is checked before anything is written to it (not even a lock), then locked and
    checked again, so no other command can write it meanwhile.
    """
    directory = store.models_dir(directory, store.TINY_ARGUMENT)
    store.refuse_out_of_reach([directory])  # models no command could load
    refuse_nesting(directory, "tiny models folder", itself=True)
    _refuse_other_models(directory)
    with held_folder(directory, "models folder"):
        _refuse_other_models(directory)
        _publish(directory, _made_models())
    info(f"tiny random models written to {directory} (for tests only; predictions mean nothing)")


def _made_models() -> dict[str, bytes]:
    """Every tiny file's bytes (relative name -> bytes), made in a private temporary folder."""
    with _private_scratch() as scratch:
        try:
            _write_models(Path(scratch))
        except Exception as exc:  # noqa: BLE001 - torch, safetensors, tokenizers: each its own type
            meaning = _scratch_failure(exc, Path(scratch))
            if meaning is None:
                raise
            raise OutputWriteError(f"cannot write the tiny models in the temporary folder {scratch}: {meaning}",
                                   "free space there, or point TMPDIR at another folder") from None
        return {rel: (Path(scratch) / rel).read_bytes() for rels in TINY_FILES.values() for rel in rels}


@contextmanager
def _private_scratch() -> Iterator[str]:
    """A new private temporary folder, removed after the block; exit 10 where none can be made."""
    from virnucpro.encoders.compiled import temporary_folder

    try:  # never the current folder (tempfile's last resort), nor /tmp in place of a TMPDIR that fails
        # a failure to remove it afterwards (the storage went away) does not fail the models written
        scratch = tempfile.TemporaryDirectory(prefix="virnucpro-tiny-", dir=temporary_folder(),
                                              ignore_cleanup_errors=True)
    except OSError as exc:  # no writable temporary folder at all
        raise OutputWriteError(f"no writable temporary folder for the tiny models: {exc.strerror or exc}",
                               "set TMPDIR to a folder of yours") from None
    with scratch as name:
        yield name


#: How torch (`inline_container.cc`), safetensors and tokenizers word a failed write.
_WRITE_FAILED = re.compile(r"unexpected pos|PytorchStreamWriter failed|file write failed")
_OS_ERROR = re.compile(r"os error (\d+)")
TINY_SCRATCH_BYTES = 4 * 1024 * 1024  # the tiny models take under 1 MB: less free than this is a full disk


def _scratch_failure(exc: Exception, scratch: Path) -> str | None:
    """What went wrong with the storage while writing the tiny models into `scratch`, in words
    (torch says "[enforce fail at inline_container.cc:672] unexpected pos ..." for a full disk),
    or None when `exc` is no storage failure (a bug, reported as one)."""
    meaning = storage_error(exc)
    number = _OS_ERROR.search(str(exc))
    if meaning is None and number is not None:
        meaning = STORAGE_ERRNOS.get(int(number.group(1)))
    if meaning is not None or not _WRITE_FAILED.search(str(exc)):
        return meaning
    if _free_bytes(scratch) < TINY_SCRATCH_BYTES:
        return STORAGE_ERRNOS[errno.ENOSPC]
    return "the write failed (a full disk, a quota or an I/O error)"


def _free_bytes(folder: Path) -> int:
    """Free bytes where `folder` is (a large number when that cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return TINY_SCRATCH_BYTES


def _recorded_tiny_files(directory: Path) -> set[str]:
    """The files the manifest records (with a sha256) as tiny models: ones virnucpro wrote."""
    roles = (store.read_manifest(directory) or {}).get("models") or {}
    return {rel for entry in roles.values() if entry.get("tiny") for rel in entry.get("sha256", {})}


def _publish(directory: Path, files: dict[str, bytes]) -> None:
    """Check every name first (nothing is written when one is in the way), then write the manifest
    (the sha256 of every file is known from its bytes), then each file atomically. A run stopped
    after the manifest (a full disk, a signal) leaves a folder of tiny models with files missing,
    which every hint sends to `models tiny DIR` and `models download` refuses: never model files
    without a manifest, which look like a hand-staged folder to download into. Once the last file
    is in place the folder is recorded as complete (`outputs_in_place`): a stop acted on from then
    on (one a library swallowed earlier included) says there is nothing to rerun."""
    recorded = _recorded_tiny_files(directory)
    for rel, data in files.items():
        _refuse_in_the_way(directory, rel, data, rel in recorded)
    with output_errors(directory / store.MANIFEST):
        _write_manifest(directory, {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()})
    *first, last = files.items()
    for rel, data in first:
        _write_file(directory, rel, data)
    with stop_signals_deferred():  # the last rename and the record of a complete folder go together
        _write_file(directory, *last)
        outputs_in_place(directory)


def _write_file(directory: Path, rel: str, data: bytes) -> None:
    """One tiny file written atomically (a link at its name is replaced, never written through)."""
    target = directory / rel
    with output_errors(target):
        target.parent.mkdir(exist_ok=True)
        write_atomically(target, data)


def _refuse_in_the_way(directory: Path, rel: str, data: bytes, recorded: bool) -> None:
    """Exit 3 when what sits at `rel` (or at its folder) is not ours to replace: a link, something
    other than a plain file, or a file neither recorded as a tiny model nor holding its bytes."""
    folder = directory / Path(rel).parent
    if folder != directory and os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
        raise _in_the_way(folder, "a symbolic link" if folder.is_symlink() else "not a folder")
    target = directory / rel
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise _in_the_way(target, f"a symbolic link to {os.readlink(target)}")
    if not stat.S_ISREG(mode):
        raise _in_the_way(target, "not a plain file")
    if not recorded and not _holds(target, data):
        raise _in_the_way(target, "a file the manifest does not record as a tiny model")


def _holds(path: Path, data: bytes) -> bool:
    """Whether the plain file at `path` holds exactly `data` (a tiny file of an interrupted run)."""
    with output_errors(path):
        return path.stat().st_size == len(data) and path.read_bytes() == data


def _in_the_way(path: Path, what: str) -> BadInputError:
    """Exit 3 naming a name `models tiny` will not write through or replace."""
    return BadInputError(f"{path} is {what}: `models tiny` never writes through a link nor replaces "
                         f"a file it did not write", "move it away, then rerun the same command")


def _write_models(directory: Path) -> None:
    """Every role's files, from one seeded generator (same bytes on every run)."""
    import torch

    generator = torch.Generator().manual_seed(TINY_SEED)
    _tiny_esm(directory, generator)
    _tiny_dnabert(directory / "DNABERT-S-tiny", generator)
    width = TINY_DNABERT["hidden_size"] + TINY_ESM["embed_dim"]
    _tiny_classifier(directory / TINY_FILES["classifier_300"][0], width, generator)
    _tiny_classifier(directory / TINY_FILES["classifier_500"][0], width, generator)


def _write_manifest(directory: Path, digests: dict[str, str]) -> None:
    """Point every role at the tiny files, whose sha256 are `digests` (other entries of a tiny
    folder's manifest are kept)."""
    record_as_tiny(directory, TINY_FILES, f"virnucpro models tiny (seed {TINY_SEED})", TINY_NAMES, digests)


def record_as_tiny(directory: Path, files: dict[str, list[str]], source: str,
                   names: dict[str, str] | None = None, digests: dict[str, str] | None = None) -> None:
    """Record `files` (role -> files, relative to `directory`) in its manifest as tiny test models
    with their sha256 (from `digests`, else read from the files), keeping other entries: the store
    then checks them against the manifest, not against the published models' pins, and every
    output made with them says "tiny". Also for benchmarks that write random weights of other sizes.
    ESM-2's fp16 copy keeps its record while it still derives from the weights (`_fp16_record_kept`)."""
    manifest = store.read_manifest(directory) or {"models": {}}
    cache = store.HashCache(directory)
    for role, rels in files.items():
        entry = {
            "files": list(rels),
            "sha256": {rel: (digests or {}).get(rel) or cache.sha256(directory, rel) for rel in rels},
            "source": source,
            "revision": __version__,
            "tiny": True,
            **({"name": names[role]} if names else {}),
        }
        fp16 = _fp16_record_kept(directory, manifest["models"].get(role), entry)
        manifest["models"][role] = {**entry, **({"fp16": fp16} if fp16 else {})}
    store.write_manifest(directory, manifest)


def _fp16_record_kept(directory: Path, old: dict | None, entry: dict) -> dict | None:
    """The earlier entry's fp16 copy record when the copy still derives from the new entry's weights
    (same name, same sha256: `models tiny` writes the same bytes again), else None. A copy that no
    longer does is removed first, when it is a plain file (the manifest records it: virnucpro wrote
    it), so no copy is left that the manifest no longer claims, in the way of every later fp16 load.
    Removed before the manifest drops its record: a stop between leaves a record of a missing copy,
    which the next fp16 load writes again."""
    record = (old or {}).get("fp16")
    copy_names = {store.Esm2Home(directory, rel, entry).copy_name: digest for rel, digest in entry["sha256"].items()}
    if not isinstance(record, dict) or record.get("file") not in copy_names:
        return None  # no record, or one naming another file: nothing of it is ours to keep or remove
    if str(record.get("source_sha256", "")).lower() == copy_names[record["file"]].lower():
        return record
    copy = directory / record["file"]
    with output_errors(copy):
        try:
            plain = stat.S_ISREG(os.lstat(copy).st_mode)
        except FileNotFoundError:
            plain = False
        if plain:
            copy.unlink(missing_ok=True)
    return None
