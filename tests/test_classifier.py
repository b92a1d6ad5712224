"""The original MLPClassifier, its restricted loader and predict_proba."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from store_fixtures import malicious_pickle_bytes, save_malicious_torch  # noqa: E402

from virnucpro import classifier  # noqa: E402
from virnucpro.classifier import (STATE_KEYS, MLPClassifier, load_classifier,  # noqa: E402
                                  pickle_globals, predict_proba, save_original_way)
from virnucpro.errors import ExitCode, ModelsError, NumericalError  # noqa: E402

# The original training script, reduced to what matters: the class lives in __main__ and the
# whole model is saved with torch.save(model). It also writes the expected probabilities.
ORIGINAL_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import torch
    from torch import nn
    import torch.nn.functional as F

    class MLPClassifier(nn.Module):
        def __init__(self, input_dim, hidden_dim, num_class):
            super(MLPClassifier, self).__init__()
            self.hidden_layer = nn.Linear(input_dim, hidden_dim)
            self.bn1 = nn.BatchNorm1d(hidden_dim)
            self.output_layer = nn.Linear(hidden_dim, num_class)
            self.dropout = nn.Dropout(0.5)
            self.init_weights()

        def init_weights(self):
            nn.init.xavier_uniform_(self.hidden_layer.weight)
            nn.init.xavier_uniform_(self.output_layer.weight)

        def forward(self, x):
            x = self.hidden_layer(x)
            x = self.bn1(x)
            x = F.relu(x)
            x = self.dropout(x)
            x = self.output_layer(x)
            return x

    torch.manual_seed(3)
    model = MLPClassifier(24, 512, 2)
    model.train()
    for _ in range(3):  # move the BatchNorm running statistics away from 0/1
        model(torch.randn(64, 24) * 2 + 0.5)
    torch.save(model, sys.argv[1])
    model.eval()
    x = torch.from_numpy(np.load(sys.argv[2]))
    with torch.no_grad():
        np.save(sys.argv[3], F.softmax(model(x), dim=1).numpy())
''')


@pytest.fixture(scope="module")
def original_pth(tmp_path_factory):
    """A classifier saved exactly the original way, by a script run as __main__."""
    folder = tmp_path_factory.mktemp("original")
    script = folder / "train.py"
    script.write_text(ORIGINAL_SCRIPT)
    features = np.random.default_rng(0).normal(size=(16, 24)).astype(np.float32)
    np.save(folder / "x.npy", features)
    subprocess.run([sys.executable, str(script), str(folder / "model.pth"), str(folder / "x.npy"),
                    str(folder / "expected.npy")], check=True, cwd=folder)
    return folder / "model.pth", features, np.load(folder / "expected.npy")


def test_state_dict_names_match_the_original():
    assert set(MLPClassifier().state_dict()) == set(STATE_KEYS)
    model = MLPClassifier()
    assert model.input_dim == 3328
    assert model.output_layer.out_features == 2


def test_loads_whole_model_pickled_from_main(original_pth):
    path, features, expected = original_pth
    assert "__main__.MLPClassifier" in pickle_globals(classifier._pickles_in(path))
    model = load_classifier(path)
    assert type(model) is MLPClassifier and not model.training
    assert model.input_dim == 24
    probs = predict_proba(model, features)
    assert probs.dtype == np.float32 and probs.shape == (16, 2)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_loads_state_dict_and_safetensors(original_pth, tmp_path):
    from safetensors.torch import save_file

    path, features, expected = original_pth
    model = load_classifier(path)
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    save_file(model.state_dict(), str(tmp_path / "sd.safetensors"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pth")
    for name in ("sd.pth", "sd.safetensors", "wrapped.pth"):
        np.testing.assert_allclose(predict_proba(load_classifier(tmp_path / name), features),
                                   expected, atol=1e-6)


def test_save_original_way_references_main(tmp_path):
    torch.manual_seed(0)
    model = MLPClassifier(10, 512, 2).eval()
    save_original_way(model, tmp_path / "m.pth")
    assert "__main__.MLPClassifier" in pickle_globals(classifier._pickles_in(tmp_path / "m.pth"))
    assert not hasattr(sys.modules["__main__"], "MLPClassifier")
    x = torch.randn(5, 10)
    np.testing.assert_allclose(predict_proba(load_classifier(tmp_path / "m.pth"), x),
                               predict_proba(model, x), atol=0)


def test_a_pickled_model_keeps_its_own_batchnorm_eps(tmp_path):
    """Found by mutation: the file's `bn1.eps` dropped for the default 1e-5 changed the scores of a
    user's classifier trained with another eps, exit 0 (the published files use 1e-5)."""
    torch.manual_seed(1)
    model = MLPClassifier(10, 32, 2).eval()
    model.bn1.eps = 1e-3
    model.bn1.running_var.uniform_(1e-4, 1e-2)  # variances of the eps's order, where eps moves the scores
    save_original_way(model, tmp_path / "m.pth")
    loaded = load_classifier(tmp_path / "m.pth")
    assert loaded.bn1.eps == 1e-3
    x = torch.randn(8, 10)
    np.testing.assert_allclose(predict_proba(loaded, x), predict_proba(model, x), atol=1e-6)


@pytest.mark.parametrize("kind", ["torch_zip", "pickle_protocol2", "pickle_protocol4", "pickle_inst"])
def test_refuses_malicious_pickle_without_running_it(tmp_path, kind):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "300_model.pth"
    if kind == "torch_zip":
        save_malicious_torch(evil, str(marker))
    elif kind == "pickle_inst":  # protocol 0's INST imports and calls: `os.system('touch MARKER')`
        evil.write_bytes(b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.")
    else:
        evil.write_bytes(malicious_pickle_bytes(str(marker), protocol=int(kind[-1])))
    with pytest.raises(ModelsError) as info:
        load_classifier(evil)
    assert info.value.code == ExitCode.MODELS
    assert "system" in str(info.value)  # names the offending global (posix.system / nt.system)
    assert not marker.exists()


def test_torch_layer_refuses_even_if_static_scan_missed(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    save_malicious_torch(evil, str(marker))
    monkeypatch.setattr(classifier, "pickle_globals", lambda data: [])
    with pytest.raises(ModelsError, match="system"):
        load_classifier(evil)
    assert not marker.exists()


def test_refuses_other_classes_and_garbage(tmp_path):
    torch.save(torch.nn.Linear(3, 2), tmp_path / "linear.pth")
    with pytest.raises(ModelsError, match="not an MLPClassifier"):
        load_classifier(tmp_path / "linear.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other_sd.pth")
    with pytest.raises(ModelsError, match="missing"):
        load_classifier(tmp_path / "other_sd.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ModelsError):
        load_classifier(tmp_path / "junk.pth")
    with pytest.raises(ModelsError, match="does not exist"):
        load_classifier(tmp_path / "absent.pth")


def test_refuses_unknown_main_class(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(textwrap.dedent('''
        import sys, torch
        class Other(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(2, 2)
        torch.save(Other(), sys.argv[1])
    '''))
    subprocess.run([sys.executable, str(script), str(tmp_path / "o.pth")], check=True)
    with pytest.raises(ModelsError, match="__main__.Other"):
        load_classifier(tmp_path / "o.pth")


def test_predict_proba_checks():
    torch.manual_seed(1)
    model = MLPClassifier(6, 16, 2).eval()
    x = np.random.default_rng(1).normal(size=(9, 6)).astype(np.float32)
    first, second = predict_proba(model, x), predict_proba(model, x, batch_size=2)
    np.testing.assert_allclose(first, second, atol=1e-6)  # eval mode: no dropout, batch-independent
    np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ModelsError, match="width 6"):
        predict_proba(model, np.zeros((2, 5), dtype=np.float32))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NumericalError):
        predict_proba(model, bad)
    assert predict_proba(model, np.zeros((0, 6), dtype=np.float32)).shape == (0, 2)


@pytest.mark.parametrize("classes", [1, 3])
def test_a_classifier_without_exactly_two_classes_is_exit_4_at_load(tmp_path, classes):
    """predict unpacks (others, virus): any other width crashed there, after all the embedding."""
    path = tmp_path / "wrong.pth"
    save_original_way(MLPClassifier(80, 16, classes), path)
    with pytest.raises(ModelsError, match=f"scores {classes} classes"):
        load_classifier(path)


def test_a_pickled_model_with_odd_internals_is_exit_4(tmp_path):
    """Allowed classes holding the wrong kind of value (a number for the module map, a list for the
    parameters) are a bad classifier file, not a crash."""
    for broken in ("modules", "parameters"):
        model = MLPClassifier(80, 16, 2)
        if broken == "modules":
            model.__dict__["_modules"] = 7
        else:
            model.hidden_layer.__dict__["_parameters"] = [1, 2]
        path = tmp_path / f"{broken}.pth"
        save_original_way(model, path)
        with pytest.raises(ModelsError):
            load_classifier(path)


class _CallsOnUnpickle:
    """Unpickles as `factory(*args)`: a REDUCE of an allowed class, arguments of the file's choice."""

    def __init__(self, factory, *args):
        self.factory, self.args = factory, args

    def __reduce__(self):
        return (self.factory, self.args)


@pytest.mark.parametrize("factory, args", [(torch.nn.Linear, (300, 200)),
                                           (torch.nn.BatchNorm1d, (300,)),
                                           (MLPClassifier, (300, 200, 2))])
def test_a_pickle_calling_an_allowed_class_builds_nothing(tmp_path, monkeypatch, factory, args):
    """`GLOBAL Linear; (30000, 30000); REDUCE` made the loader build a 4 GB layer before refusing
    it: the allowed classes come back as inert shells, never constructed from a file's arguments."""
    built = []
    module_init = torch.nn.Module.__init__

    def counting_init(self, *a, **k):
        built.append(type(self).__name__)
        module_init(self, *a, **k)

    evil = tmp_path / "300_model.pth"
    torch.save(_CallsOnUnpickle(factory, *args), evil)
    monkeypatch.setattr(torch.nn.Module, "__init__", counting_init)
    with pytest.raises(ModelsError) as info:
        load_classifier(evil)
    assert info.value.code == ExitCode.MODELS
    assert built == []


def test_a_pickle_calling_bytearray_is_refused_before_unpickling(tmp_path):
    """torch's own allow-list has bytearray: `bytearray(10**10)` in a 1 KB file zeroed 10 GB."""
    evil = tmp_path / "300_model.pth"
    torch.save(_CallsOnUnpickle(bytearray, 10**6), evil)
    with pytest.raises(ModelsError, match=r"refused: .*builtins\.bytearray"):
        load_classifier(evil)


@pytest.mark.parametrize("kind", ["original", "safetensors"])
def test_a_classifier_with_non_finite_weights_is_exit_4_at_load_naming_them(tmp_path, kind):
    """Every score would be NaN, found only after all the embedding, and blamed on the embeddings."""
    from safetensors.torch import save_file

    model = MLPClassifier(80, 16, 2)
    with torch.no_grad():
        model.output_layer.bias[1] = float("nan")
    path = tmp_path / ("nan.pth" if kind == "original" else "nan.safetensors")
    save_original_way(model, path) if kind == "original" else save_file(model.state_dict(), str(path))
    with pytest.raises(ModelsError, match="nan.* holds NaN/Inf values in output_layer.bias"):
        load_classifier(path)


def test_a_whole_model_in_torchs_legacy_format_is_named_so_with_how_to_save_its_weights(tmp_path, monkeypatch):
    """torch before 1.6 (or _use_new_zipfile_serialization=False) pickles a whole model in a form the
    safe loader cannot read: it was called "not an original .pth", which it may well be."""
    from functools import partial

    from virnucpro.classifier import save_original_way

    model = MLPClassifier(input_dim=8)
    path = tmp_path / "legacy.pth"
    with monkeypatch.context() as patched:
        patched.setattr(torch, "save", partial(torch.save, _use_new_zipfile_serialization=False))
        save_original_way(model, path)
    with pytest.raises(ModelsError) as refused:
        load_classifier(path)
    assert "a whole model saved in torch's legacy format" in str(refused.value), refused.value
    assert "torch.save(model.state_dict(), 'classifier.pth')" in refused.value.hint, refused.value.hint


def test_a_state_dict_in_torchs_legacy_format_loads(tmp_path):
    model = MLPClassifier(input_dim=8)
    path = tmp_path / "legacy_state.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    loaded = load_classifier(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
