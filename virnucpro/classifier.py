"""The original VirNucPro classifier (SPEC §1 step 7) and a loader that never runs code from a file.

The published `300_model.pth` / `500_model.pth` are whole models saved with `torch.save(model)` from
a script, so their pickle names the class `__main__.MLPClassifier`. Unpickling such a file normally
imports and calls whatever the pickle names; here every global the pickle refers to is checked
against a short allow-list first (statically, without executing anything), and the file is then
read with torch's `weights_only` unpickler, which maps `__main__.MLPClassifier` and the torch
layers it holds onto inert shell classes: unpickling fills their `__dict__` and never runs a
constructor, so a pickle that *calls* `Linear(30000, 30000)` builds nothing and is refused cheaply.
Only the shells' tensors are used: they are copied into a freshly built `MLPClassifier`, so nothing
but numbers survives from the file.

Also accepted: a state_dict saved with `torch.save(model.state_dict())` and a `.safetensors` file
with the same key names.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.errors import ModelsError, NumericalError, VirnucproError, is_link_loop, link_loop, path_mode
from virnucpro.seqio import LEGACY_TORCH_START

#: The state_dict keys of the original classifier (``num_batches_tracked`` may be absent).
STATE_KEYS = (
    "hidden_layer.weight", "hidden_layer.bias",
    "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
    "output_layer.weight", "output_layer.bias",
)


class _PickledModule:
    """An unpickled module's attributes and nothing else: no constructor, no methods to call.

    Pickle rebuilds a saved module with `cls.__new__(cls)` and fills `__dict__` from the saved
    state; a file that instead calls the class with arguments gets a TypeError, not an allocation.
    """


def _shell(name: str) -> type:
    """An inert stand-in, named `name` for messages, for one class a pickled model may name."""
    return type(name, (_PickledModule,), {"__module__": __name__})


#: Classes a pickled whole model may name, besides torch's own tensor/storage/rebuild globals,
#: each mapped to the inert shell the unpickler builds in its place.
_MODULE_CLASSES = {
    "torch.nn.modules.linear.Linear": _shell("Linear"),
    "torch.nn.modules.batchnorm.BatchNorm1d": _shell("BatchNorm1d"),
    "torch.nn.modules.activation.ReLU": _shell("ReLU"),
    "torch.nn.modules.dropout.Dropout": _shell("Dropout"),
    "torch.nn.modules.container.Sequential": _shell("Sequential"),
}
_PICKLED_CLASSIFIER = _shell("MLPClassifier")
_CLASSIFIER_NAMES = ("__main__.MLPClassifier", "virnucpro.classifier.MLPClassifier")


class MLPClassifier(nn.Module):
    """`Linear(in, 512) → BatchNorm1d(512) → ReLU → Dropout(0.5) → Linear(512, 2)`.

    Attribute names and constructor arguments are those of the original code, so its state_dict
    keys match (`hidden_layer`, `bn1`, `output_layer`, `dropout`). The ReLU is functional there, not
    a submodule, and stays so here: an unpickled original model has no `relu` attribute.
    """

    def __init__(self, input_dim: int = 3328, hidden_dim: int = 512, num_class: int = 2):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.sha256: str | None = None  # of the file it was loaded from (load_classifier)
        self.dropout = nn.Dropout(0.5)
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    @property
    def input_dim(self) -> int:
        """Width of the feature vector: DNABERT-S width + ESM-2 width (3328 for the real models)."""
        return self.hidden_layer.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)


# --------------------------------------------------------------------------------------------
# Static inspection of pickles
# --------------------------------------------------------------------------------------------

def _allowed_globals() -> set[str]:
    from torch import _weights_only_unpickler as wou

    allowed = set(wou._get_allowed_globals().keys())  # tensors, storages, rebuild functions
    allowed.discard("builtins.bytearray")  # never in a checkpoint; bytearray(10**10) zeroes 10 GB
    allowed.update(_MODULE_CLASSES)
    allowed.update({*_CLASSIFIER_NAMES, "collections.OrderedDict", "builtins.set"})
    return allowed


def _map_py2_name(module: str, name: str) -> str:
    """Protocol-2 pickles (torch.save's default) use Python 2 names such as `__builtin__.set`."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
               "SHORT_BINSTRING", "BINSTRING", "STRING"}


class _GlobalTracker:
    """Follows just enough of a pickle's stack and memo to name what each GLOBAL/STACK_GLOBAL/INST
    imports (an EXT1/2/4 global, named by a number, is named so: never a known one).

    Every opcode pushes one entry (a string when it pushes one, else None), so the two strings a
    STACK_GLOBAL pops are found even when they come from the memo.
    """

    def __init__(self, found: list[str]):
        self.found = found
        self.strings: list[Any] = []
        self.memo: dict[int, Any] = {}

    def see(self, name: str, arg: Any) -> None:
        """Account for one opcode."""
        if name in ("GLOBAL", "INST"):  # INST (protocol 0) imports as GLOBAL does, then calls
            module, _, attr = str(arg).partition(" ")
            self.found.append(_map_py2_name(module, attr))
            self.strings.append(None)
        elif name in ("EXT1", "EXT2", "EXT4"):  # a global by its number in copyreg's extension registry
            self.found.append(f"<extension code {arg}>")
            self.strings.append(None)
        elif name == "STACK_GLOBAL":
            attr = self.strings.pop() if self.strings else None
            module = self.strings.pop() if self.strings else None
            resolved = isinstance(module, str) and isinstance(attr, str)
            self.found.append(f"{module}.{attr}" if resolved else "<unresolvable STACK_GLOBAL>")
            self.strings.append(None)
        elif name in _STRING_OPS:
            self.strings.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            self.memo[int(arg)] = self.strings[-1] if self.strings else None
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.strings[-1] if self.strings else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            self.strings.append(self.memo.get(int(arg)))
        elif name not in ("FRAME", "PROTO"):
            self.strings.append(None)


def pickle_globals(data: bytes) -> list[str]:
    """Every global (`module.name`) the pickle stream(s) in `data` would import, in order.

    Pure disassembly with `pickletools`; nothing is imported or called. Handles GLOBAL and
    protocol-4 STACK_GLOBAL (whose two strings may come from the memo). Stops quietly at data
    that is not a pickle (the raw storages that follow the pickles in torch's legacy format).
    """
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        start = stream.tell()
        tracker = _GlobalTracker(found)
        try:
            for op, arg, _pos in pickletools.genops(stream):
                tracker.see(op.name, arg)
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle: stop scanning
            break
        if stream.tell() == start:
            break
    return found


def _pickles_in(path: Path) -> bytes:
    """The pickle bytes of a torch checkpoint: `*/data.pkl` of the zip format (read through the
    file, never the whole archive in memory), else the file (its size bounded by `_refuse_not_a_classifier_file`)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not names:
                raise ModelsError(f"{path}: a zip file without data.pkl is not a torch checkpoint")
            if archive.getinfo(names[0]).file_size > CLASSIFIER_MAX_BYTES:
                raise ModelsError(f"{path}: its data.pkl is larger than {CLASSIFIER_MAX_BYTES:,} bytes, "
                                  f"far more than a classifier holds")
            return archive.read(names[0])
    return path.read_bytes()


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len < 100_000_000 and head[8:9] == b"{"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _refuse(path: Path, offending: list[str]) -> ModelsError:
    names = ", ".join(dict.fromkeys(offending))
    return ModelsError(
        f"classifier {path} refused: it holds objects other than tensors ({names}, not part of "
        f"an MLPClassifier checkpoint); loading it could run code",
        hint="use the original 300_model.pth/500_model.pth (`virnucpro models download`) or a "
             f"state_dict/.safetensors file: {STATE_DICT_HINT}")


def _tensor(value: Any, what: str, path: Path) -> torch.Tensor:
    """`value` as a tensor of the classifier (floats as float32): anything else, complex numbers
    included (weights are real; they cannot even be compared), is exit 4 naming it."""
    if not isinstance(value, torch.Tensor):
        raise ModelsError(f"{path}: {what} is a {type(value).__name__}, not a tensor")
    if value.is_complex():
        raise ModelsError(f"{path}: {what} holds complex numbers ({value.dtype}); a classifier's weights are real",
                          _SOUND_CLASSIFIER_HINT)
    return value.detach().to(torch.float32) if value.is_floating_point() else value.detach()


def _state_from_module(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], float]:
    """Read the tensors out of the shells of an unpickled original model (it has no methods)."""
    modules = vars(obj).get("_modules", {})
    if not isinstance(modules, dict):
        raise ModelsError(f"{path}: the pickled MLPClassifier's modules are a {type(modules).__name__}")
    state: dict[str, torch.Tensor] = {}
    eps = 1e-5
    for sub, kind in (("hidden_layer", "Linear"), ("bn1", "BatchNorm1d"),
                      ("output_layer", "Linear")):
        module = modules.get(sub)
        if not isinstance(module, _PickledModule) or type(module).__name__ != kind:
            raise ModelsError(f"{path}: the pickled MLPClassifier has no {kind} `{sub}`")
        fields = vars(module)
        tensors = [fields.get("_parameters", {}), fields.get("_buffers", {})]
        if not all(isinstance(group, dict) for group in tensors):
            raise ModelsError(f"{path}: the pickled `{sub}` holds no parameter and buffer mappings")
        for key, value in {**tensors[0], **tensors[1]}.items():
            if value is not None:
                state[f"{sub}.{key}"] = _tensor(value, f"{sub}.{key}", path)
        if sub == "bn1":
            raw_eps = fields.get("eps", 1e-5)
            if not isinstance(raw_eps, float) or not 0 < raw_eps < 1:
                raise ModelsError(f"{path}: bn1.eps is not a small positive float")
            eps = raw_eps
    return state, eps


def _build(state: Mapping[str, torch.Tensor], path: Path, eps: float = 1e-5) -> MLPClassifier:
    """The MLP from a checked state_dict: the original's keys (DataParallel's `module.` prefix dropped), finite tensors."""
    state = dict(state)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    required = [k for k in STATE_KEYS if k != "bn1.num_batches_tracked"]
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in STATE_KEYS]
    if missing or unexpected:
        raise ModelsError(f"{path} is not an MLPClassifier state_dict"
                          + (f"; missing {', '.join(missing)}" if missing else "")
                          + (f"; unexpected {', '.join(unexpected[:5])}" if unexpected else ""))
    for key in state:
        state[key] = _tensor(state[key], key, path)
    _refuse_non_finite(state, path)
    _refuse_negative_variance(state, path)
    hidden_w, out_w = state["hidden_layer.weight"], state["output_layer.weight"]
    if hidden_w.dim() != 2 or out_w.dim() != 2 or out_w.shape[1] != hidden_w.shape[0]:
        raise ModelsError(f"{path}: inconsistent layer shapes {tuple(hidden_w.shape)} and "
                          f"{tuple(out_w.shape)}")
    if 0 in hidden_w.shape:
        raise ModelsError(f"{path}: its hidden layer has width 0 (shape {tuple(hidden_w.shape)}): no classifier "
                          "scores anything with it", _SOUND_CLASSIFIER_HINT)
    if out_w.shape[0] != 2:
        raise ModelsError(f"{path} scores {out_w.shape[0]} classes; VirNucPro's classifier scores 2 "
                          "(others, virus)", "give the 300_model.pth/500_model.pth of VirNucPro")
    hidden_dim, input_dim = hidden_w.shape
    model = MLPClassifier(int(input_dim), int(hidden_dim), int(out_w.shape[0]))
    model.bn1.eps = eps
    if "bn1.num_batches_tracked" not in state:
        state["bn1.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelsError(f"{path}: tensors do not fit an MLPClassifier: {exc}") from None
    _refuse_non_finite_scores(model.eval(), path)
    return model


_SOUND_CLASSIFIER_HINT = ("give the 300_model.pth/500_model.pth of VirNucPro (or your own classifier saved "
                          "again from sound weights)")


def _refuse_non_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """NaN/Inf in a weight would make every score NaN: the file's fault, named (exit 4)."""
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise ModelsError(f"{path} holds NaN/Inf values in {', '.join(bad)}: it is damaged or was saved from a "
                          "diverged training", _SOUND_CLASSIFIER_HINT)


def _refuse_negative_variance(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """A variance below zero is no variance: BatchNorm's sqrt(var + eps) makes those units NaN, so
    every score would be NaN, found only by predict after all the embedding (exit 9). Exit 4 here."""
    negative = int((state["bn1.running_var"] < 0).sum())
    if negative:
        raise ModelsError(f"{path}: bn1.running_var holds {negative} negative value(s) (a variance cannot be "
                          "negative, and BatchNorm would make every score NaN): the file is damaged",
                          _SOUND_CLASSIFIER_HINT)


#: Feature vectors every classifier scores once at load, in this order (see `_probe_features`).
PROBES = ("zeros", "ones", "pseudo-random")


def _probe_features(width: int) -> torch.Tensor:
    """The load-time probe batch, float32 `(3, width)`: zeros, ones and one fixed standard-normal
    vector (its own seeded generator: the global RNG is left alone), about the scale of real features."""
    generator = torch.Generator().manual_seed(0)
    return torch.stack([torch.zeros(width), torch.ones(width), torch.randn(width, generator=generator)])


@torch.no_grad()
def _refuse_non_finite_scores(model: MLPClassifier, path: Path) -> None:
    """Finite weights can still score NaN/Inf (values near the float32 limit overflow): the model,
    in eval mode and fp32, scores PROBES once (3 vectors: a few milliseconds at 3,328 inputs), and a
    non-finite score is the file's fault, named with the layer where it starts (exit 4), not a NaN
    that predict finds after hours of embedding (exit 9)."""
    x = _probe_features(model.input_dim)
    bad = ~torch.isfinite(F.softmax(model(x), dim=1)).all(dim=1)
    if bad.any():
        probes = ", ".join(name for name, failed in zip(PROBES, bad.tolist()) if failed)
        raise ModelsError(f"{path} gives NaN/Inf scores for plain feature vectors ({probes}), from "
                          f"{_first_non_finite_layer(model, x)} on: its weights overflow float32",
                          _SOUND_CLASSIFIER_HINT)


def _first_non_finite_layer(model: MLPClassifier, x: torch.Tensor) -> str:
    """The first layer of `model.forward` (eval mode: no dropout) whose output holds NaN/Inf for `x`."""
    for name, layer in (("hidden_layer", model.hidden_layer), ("bn1", model.bn1),
                        ("output_layer", lambda h: model.output_layer(F.relu(h)))):
        x = layer(x)
        if not torch.isfinite(x).all():
            return name
    return "the softmax"


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.<>]+)")
#: An upper bound, not a size: the original 300_model.pth/500_model.pth are about 7 MB, and any
#: MLPClassifier virnucpro can use has their shape; a file far above is refused before it is read.
CLASSIFIER_MAX_BYTES = 512 * 1024 * 1024


def load_classifier(path: Path) -> MLPClassifier:
    """Load the classifier in eval mode on CPU from an original `.pth`, a state_dict or safetensors.

    Raises `ModelsError` (exit 4) naming the offending global for any pickle that refers to
    anything but the MLP's modules and torch's tensor machinery; such a file is never executed.
    The model's `sha256` is that of the file loaded (`store.verified_name`).
    """
    from virnucpro.models import store

    path = Path(path)
    _refuse_not_a_classifier_file(path)
    # a read the storage (or the mode) refused is said so: never a damaged file to replace, nor exit 10
    with store.reading(path), store.verified_name(path):  # the file hashed is the file scanned and loaded
        digest = store.verified_digest(path) or store.sha256_file(path)
        if _is_safetensors(path):
            model = _load_safetensors(path)
        else:
            _refuse_foreign_globals(path)
            model = _model_from_unpickled(_unpickle_weights_only(path), path)
    model.sha256 = digest
    return model


def _refuse_not_a_classifier_file(path: Path) -> None:
    """Exit 4 saying what is at `path` when it is not a plain file of a plausible size."""
    mode = path_mode(path, ModelsError)  # a folder on the way that cannot be entered is named, exit 4
    if mode is None and is_link_loop(path):
        raise link_loop(path, "classifier file", ModelsError)
    if mode is None:
        raise ModelsError(f"classifier file {path} does not exist",
                          hint="check the path given to --classifier (or leave --classifier out to use the models "
                               "folder's classifier for the chunk size)")
    if S_ISDIR(mode):
        raise ModelsError(f"classifier file {path} is a directory, not a file",
                          hint="give the .pth or .safetensors file inside it")
    if not S_ISREG(mode):
        raise ModelsError(f"classifier file {path} is not a regular file (a pipe, device or socket)",
                          hint="give a .pth or .safetensors file")
    size = path.stat().st_size
    if size > CLASSIFIER_MAX_BYTES:
        raise ModelsError(f"classifier file {path} is {size:,} bytes, far above any classifier "
                          f"virnucpro can load (at most {CLASSIFIER_MAX_BYTES:,}; the originals are "
                          f"about 7 MB)", hint="give VirNucPro's 300_model.pth or 500_model.pth, or your own "
                                               "classifier of the same shape")


def _load_safetensors(path: Path) -> MLPClassifier:
    """A classifier from a `.safetensors` file with the state_dict's key names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from virnucpro.models.store import utf8_name

    try:
        with utf8_name(path, utf8_only=True) as name:
            return _build(load_file(name, device="cpu"), path)
    except OSError as exc:
        if exc.errno is not None:
            raise  # the system's read failed: `store.reading` says so
        raise ModelsError(f"{path} is not a readable safetensors file: {exc}") from None
    except (SafetensorError, ValueError) as exc:
        raise ModelsError(f"{path} is not a readable safetensors file: {exc}") from None


def _refuse_foreign_globals(path: Path) -> None:
    """Exit 4 before unpickling when the pickle names anything outside the allow-list."""
    try:
        offending = [g for g in pickle_globals(_pickles_in(path)) if g not in _allowed_globals()]
    except zipfile.BadZipFile as exc:
        raise ModelsError(f"{path} is not a torch checkpoint: {exc}") from None
    if offending:
        raise _refuse(path, offending)


def _unpickle_weights_only(path: Path) -> Any:
    """torch's weights_only unpickler, allowed the MLP's classes; every failure is exit 4."""
    safe = [*[(_PICKLED_CLASSIFIER, name) for name in _CLASSIFIER_NAMES],
            *[(shell, name) for name, shell in _MODULE_CLASSES.items()]]
    try:
        from virnucpro.models.store import utf8_name

        with torch.serialization.safe_globals(safe), utf8_name(path) as name:
            return torch.load(name, map_location="cpu", weights_only=True)
    except VirnucproError:
        raise  # ours, a stop signal's included: no fault of the file
    except OSError as exc:
        if exc.errno is not None:
            raise  # the system's read failed, not the file: `store.reading` says so
        raise ModelsError(f"cannot load classifier {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - every failure of an untrusted file is exit 4
        message = str(exc)
        match = _GLOBAL_IN_MESSAGE.search(message)
        if match:
            raise _refuse(path, [match.group(1)]) from None
        # torch's own text may advise weights_only=False: exactly the unsafe load we refuse
        first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        if "weights_only" in first_line:
            first_line = type(exc).__name__
        if _legacy_format(path):
            raise ModelsError(f"cannot load classifier {path}: a whole model saved in torch's legacy format (torch "
                              "before 1.6, or _use_new_zipfile_serialization=False), which cannot be read without "
                              "running its code", hint=STATE_DICT_HINT) from None
        raise ModelsError(f"cannot load classifier {path}: not an original .pth, a state_dict or a "
                          f"safetensors file ({first_line})",
                          hint="give the 300_model.pth/500_model.pth of VirNucPro or a file saved from "
                               "virnucpro's MLPClassifier") from None


STATE_DICT_HINT = ("where the model's class can be imported, load it and save its weights alone: "
                   "torch.save(model.state_dict(), 'classifier.pth'); then give --classifier classifier.pth")


def _legacy_format(path: Path) -> bool:
    """Whether `path` starts as torch's legacy (pre-zip) format does."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(LEGACY_TORCH_START)) == LEGACY_TORCH_START
    except OSError:
        return False


def _model_from_unpickled(obj: Any, path: Path) -> MLPClassifier:
    """A fresh MLPClassifier holding only the numbers of an unpickled model or state_dict."""
    if type(obj) is _PICKLED_CLASSIFIER:
        state, eps = _state_from_module(obj, path)
        return _build(state, path, eps)
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
        if all(isinstance(k, str) for k in obj):
            return _build(OrderedDict(obj), path)
    raise ModelsError(f"{path} holds a {type(obj).__name__}, not an MLPClassifier or its state_dict")


def save_original_way(model: MLPClassifier, path: Path) -> None:
    """`torch.save(model)` exactly as the original training script did: class `__main__.MLPClassifier`.

    Pickle records a class by module and name and checks that the name resolves to the same object,
    so a same-named subclass is registered on `__main__` just for the duration of the save.
    """
    import sys

    main = sys.modules["__main__"]
    original_cls = type("MLPClassifier", (MLPClassifier,), {"__module__": "__main__",
                                                            "__qualname__": "MLPClassifier"})
    sentinel = object()
    previous = getattr(main, "MLPClassifier", sentinel)
    clone = original_cls.__new__(original_cls)
    clone.__dict__.update(model.__dict__)
    try:
        setattr(main, "MLPClassifier", original_cls)
        torch.save(clone, str(path))
    finally:
        if previous is sentinel:
            delattr(main, "MLPClassifier")
        else:
            setattr(main, "MLPClassifier", previous)


@torch.no_grad()
def predict_proba(model: MLPClassifier, features: Any, batch_size: int = 65536) -> np.ndarray:
    """Softmax class probabilities, float32 `(n, 2)`: column 0 'others', column 1 'virus'.

    `features` is an `(n, input_dim)` array or tensor (DNABERT-S vector then ESM-2 vector, the
    original's concatenation order). Runs in eval mode on the model's device; NaN/Inf in the result
    raises `NumericalError` (exit 9).
    """
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if x.dim() != 2 or x.shape[1] != model.input_dim:
        raise ModelsError(f"classifier expects features of width {model.input_dim}, got shape "
                          f"{tuple(x.shape)} (embeddings from other models?)")
    out = np.empty((x.shape[0], model.output_layer.out_features), dtype=np.float32)
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size].to(device=device, dtype=torch.float32)
        out[start:start + batch.shape[0]] = F.softmax(model(batch), dim=1).cpu().numpy()
    if not np.isfinite(out).all():
        raise NumericalError("the classifier produced NaN/Inf scores (its weights or the features overflow "
                             "float32)", "check the classifier file, or use VirNucPro's own")
    return out
