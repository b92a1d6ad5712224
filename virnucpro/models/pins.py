"""The published models: where each file comes from and what its bytes must be (its pin).

Every file is pinned here, never learned from a server: the sha256 of ESM-2's `.pt` and its
contact-regression file, the sha256 of every DNABERT-S file at a fixed hub revision, and the git
blob id of each classifier at a fixed commit (what GitHub's tree of that commit lists).
Every file also has a byte bound (`max_bytes`): a transfer that announces or delivers more is cut
off at once (exit 4), so a broken or hostile mirror cannot fill the disk. The exact sizes of the
published files are not pinned here, so each bound is an upper bound well above the real size,
never tight enough to refuse the genuine file (the mismatch check still rejects any other bytes).
`download` verifies every transfer against these pins; `store` compares every file of a role that
is not tiny with them (downloaded or hand-staged alike). This module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ESM_HOST = "https://dl.fbaipublicfiles.com"
DNABERT_S_REPO = "zhihan1996/DNABERT-S"
DNABERT_S_REVISION = "00e47f96cdea35e4b6f5df89e5419cbe47d490c6"
VIRNUCPRO_REPO = "Li-Jing-1997/VirNucPro"
VIRNUCPRO_COMMIT = "0f93f2755a7ea1acd3ff1bcf182892f960ef3326"

MiB = 1024 * 1024
GiB = 1024 * MiB
# Upper bounds (not sizes) of the published files, each well above the real size:
ESM2_WEIGHTS_BOUND = 12 * GiB     # esm2_t36_3B_UR50D.pt is about 5.7 GB
ESM2_REGRESSION_BOUND = 64 * MiB  # the contact-regression file is a few kB
DNABERT_WEIGHTS_BOUND = 4 * GiB   # pytorch_model.bin (117 M parameters in fp32) is about 0.5 GB
SMALL_FILE_BOUND = 64 * MiB       # config, tokenizer and special-token JSON files: kB to a few hundred kB
CLASSIFIER_BOUND = 256 * MiB      # 300_model.pth / 500_model.pth (3328 x 512 fp32 weights) are about 7 MB
LARGEST_BOUND = ESM2_WEIGHTS_BOUND  # a file listed without its own bound gets the largest one


@dataclass(frozen=True)
class FileSource:
    relpath: str                 # where it goes inside the models directory
    base: str                    # scheme://host, replaced by --mirror
    path: str                    # path on the host, kept under --mirror
    sha256: str | None = None    # pinned content hash
    git_sha1: str | None = None  # pinned git blob id (where that is what the source publishes)
    max_bytes: int = LARGEST_BOUND  # the most bytes the file may have (an upper bound, see above)


@dataclass(frozen=True)
class RoleSource:
    role: str
    name: str
    source: str
    revision: str | None
    files: tuple[FileSource, ...]


def _hf(filename: str, sha256: str, max_bytes: int = SMALL_FILE_BOUND) -> FileSource:
    return FileSource(f"DNABERT-S/{filename}", "https://huggingface.co",
                      f"{DNABERT_S_REPO}/resolve/{DNABERT_S_REVISION}/{filename}", sha256=sha256,
                      max_bytes=max_bytes)


def _classifier(name: str, git_sha1: str) -> RoleSource:
    return RoleSource(
        f"classifier_{name[:3]}", name, f"https://github.com/{VIRNUCPRO_REPO}", VIRNUCPRO_COMMIT,
        (FileSource(name, "https://raw.githubusercontent.com",
                    f"{VIRNUCPRO_REPO}/{VIRNUCPRO_COMMIT}/{name}", git_sha1=git_sha1,
                    max_bytes=CLASSIFIER_BOUND),))


SOURCES: dict[str, RoleSource] = {
    "esm2": RoleSource(
        "esm2", "esm2_t36_3B_UR50D", f"{ESM_HOST}/fair-esm", None,
        (FileSource("esm2_t36_3B_UR50D.pt", ESM_HOST, "fair-esm/models/esm2_t36_3B_UR50D.pt",
                    sha256="7de8b4082ba15891959ab368b77ce3886697af1efb16d3c9e9e7b0c5d3f07500",
                    max_bytes=ESM2_WEIGHTS_BOUND),
         FileSource("esm2_t36_3B_UR50D-contact-regression.pt", ESM_HOST,
                    "fair-esm/regression/esm2_t36_3B_UR50D-contact-regression.pt",
                    sha256="4da500eab246481dc9c8c95bc7b1d02f2803d761c380b0e95186d4a07d0fc84e",
                    max_bytes=ESM2_REGRESSION_BOUND))),
    "dnabert_s": RoleSource(
        "dnabert_s", DNABERT_S_REPO, f"https://huggingface.co/{DNABERT_S_REPO}", DNABERT_S_REVISION,
        (_hf("config.json", "d54c142114563aa34ef7c2b54ccc921d08e50cd7c3cd69c439d5e0d2bbcfcdee"),
         _hf("pytorch_model.bin", "f3cfc3d0541859df64759e758cc4bc40fe1d5760799a7d098a9f9f09501c1e5f",
             DNABERT_WEIGHTS_BOUND),
         _hf("tokenizer.json", "667f5a0e6e9630f7052b004784dda7c7aeba395cc4ca3c01b11b02e6aa29d7b1"),
         _hf("tokenizer_config.json", "f13dbe9968de35aff25b06965f18e30449ec37ed94811bd0c7f97990f3b18ebb"),
         _hf("special_tokens_map.json", "b6d346be366a7d1d48332dbc9fdf3bf8960b5d879522b7799ddba59e76237ee3"))),
    "classifier_300": _classifier("300_model.pth", "a0b5b85e7c1e44f00cde146d091beb82b2c8e855"),
    "classifier_500": _classifier("500_model.pth", "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d"),
}


#: The chunk sizes the published classifiers were trained for (their roles: classifier_<size>);
#: any other size needs the user's own classifier.
CLASSIFIER_CHUNK_SIZES = tuple(int(role.removeprefix("classifier_")) for role in SOURCES if role.startswith("classifier_"))


def pin_for(role: str, rel: str) -> FileSource | None:
    """The published file of `role` with the same file name as `rel` (wherever a manifest put it),
    or None when the published model has no file of that name."""
    name = Path(rel).name
    return next((spec for spec in SOURCES[role].files if Path(spec.relpath).name == name), None)
