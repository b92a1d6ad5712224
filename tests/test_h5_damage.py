"""A damaged embedding shard (one byte changed anywhere) is the file's own error, exit 5, or a file
`embed` computes again: never an h5py exception reported as a bug (exit 1)."""

from __future__ import annotations

import json
import subprocess
import sys

from h5_helpers import edited_shard

PROBE = r"""
import json, os, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np
from virnucpro import h5shard
from virnucpro.embed import already_embedded
from virnucpro.errors import VirnucproError

folder = Path(sys.argv[1])
ids = [f"read_{i:03d}_chunk_1F1" for i in range(40)]
models = {"dnabert_s": {"name": "tiny", "sha256": "1" * 64}, "esm2": {"name": "tiny", "sha256": "2" * 64}}
attrs = {"shard_index": 0, "shard_of": 1, "shard_sha256": "0" * 64, "chunk_size": 500, "models": models,
         "precision": "fp32", "device": "cpu"}
good = folder / "good.h5"
h5shard.write_shard(good, ids, lambda a, b: (np.full((b - a, 8), 0.5, "f4"), np.full((b - a, 12), 0.25, "f4")),
                    (8, 12), attrs)
meta = SimpleNamespace(sha256="0" * 64, index=0, of=1, chunk_size=500)
original = good.read_bytes()
damaged = folder / "damaged.h5"


def probe(position):
    # the file with one byte damaged, read every way predict and embed read it (in a forked child)
    data = bytearray(original)
    data[position] ^= 0xFF
    damaged.write_bytes(bytes(data))
    unexpected = []
    for name, read in (("read_info", lambda: h5shard.read_info(damaged)),
                       ("iter_rows", lambda: list(h5shard.iter_rows(damaged))),
                       ("iter_ids", lambda: list(h5shard.iter_ids(damaged))),
                       ("verify_shard", lambda: h5shard.verify_shard(damaged, ids)),
                       ("already_embedded", lambda: already_embedded(damaged, meta, ids, models, "fp32"))):
        try:
            read()
        except VirnucproError:
            pass
        except Exception as exc:
            unexpected.append([position, name, f"{type(exc).__name__}: {exc}"[:200]])
    return unexpected


unexpected, crashed = [], []
positions = range(0, len(original), max(1, len(original) // 300))
for position in positions:
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reader)
        os.write(writer, json.dumps(probe(position)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        report = pipe.read()
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        crashed.append(position)  # the HDF5 library itself fails on this damage: no Python code runs
    else:
        unexpected.extend(json.loads(report))
print(json.dumps({"cases": len(positions), "crashed": crashed, "unexpected": unexpected}))
"""


def test_one_damaged_byte_anywhere_is_the_files_error_or_recomputed(tmp_path):
    """About 300 single-byte damages spread over a whole shard file, read the ways predict and embed
    read it, each in a forked child: none reaches the HDF5 library, some of whose damaged headers
    crash it outright (a segmentation fault no Python code can report), since the seal fails first."""
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", PROBE, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cases"] > 250 and not result["crashed"], result["crashed"]
    assert not result["unexpected"], json.dumps(result["unexpected"][:10], indent=1)


def test_an_output_with_an_undecodable_id_is_computed_again(tmp_path, tiny_models, golden_prepared, capsys):
    from virnucpro import prepared as fmt
    from virnucpro.embed import embed

    shard = golden_prepared / "shards" / fmt.shard_name(0)
    out = tmp_path / "s.h5"
    embed(shard, out, models=tiny_models, device="cpu")
    with edited_shard(out) as handle:
        handle["ids"][5] = handle["ids"][5][:-1] + b"\xff"
    capsys.readouterr()
    embed(shard, out, models=tiny_models, device="cpu")
    assert "already holds" not in capsys.readouterr().err
    from virnucpro import h5shard
    assert list(h5shard.iter_ids(out)) == [record[0] for record in fmt.read_shard(shard)]



def test_a_vector_name_that_is_no_dataset_is_the_files_error(tmp_path):
    """Damage that turns /dnabert_s into a named datatype (found by a finer sweep) is exit 5, not an
    AttributeError reported as a bug."""
    import h5py
    import numpy as np
    import pytest

    from virnucpro import h5shard
    from virnucpro.errors import InconsistentInputsError

    path = tmp_path / "odd.h5"
    with edited_shard(path, "w") as handle:
        handle.create_dataset("ids", data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype("utf-8"))
        handle["dnabert_s"] = np.dtype("float32")
    with pytest.raises(InconsistentInputsError, match="dnabert_s is not a dataset"):
        h5shard.verify_shard(path, ["a", "b"])


def test_a_shard_without_the_seal_or_with_a_broken_one_is_refused_before_hdf5_reads_it(tmp_path):
    """A file h5py wrote (no seal) and a sealed file edited afterwards are each exit 5 naming the
    file; the edited one still starts with the seal, but its seal no longer holds (embed does not
    replace it: see test_embed_out_race)."""
    import h5py
    import numpy as np
    import pytest

    from virnucpro import h5shard
    from virnucpro.errors import InconsistentInputsError

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["ids"] = np.array([b"a"])
    with pytest.raises(InconsistentInputsError, match="foreign.h5 .*does not start with the seal"):
        h5shard.read_info(foreign)
    assert not h5shard.is_sealed_shard(foreign)
    edited = tmp_path / "edited.h5"
    with edited_shard(edited, "w") as handle:
        handle["ids"] = np.array([b"a"])
    h5shard.check_seal(edited)
    with h5py.File(edited, "a") as handle:
        handle.attrs["note"] = "edited"
    with pytest.raises(InconsistentInputsError, match="edited.h5 changed after embed wrote it") as refused:
        h5shard.read_info(edited)
    assert "a byte copy" in refused.value.hint and "h5repack" in refused.value.hint
    assert h5shard.is_sealed_shard(edited) and not h5shard.seal_holds(edited)
