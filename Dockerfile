# virnucpro: the CLI with its pinned dependencies on a CUDA-enabled PyTorch, for the Nextflow
# pipeline (process.container in conf/base.config) and for running by hand.
#
#   docker build -t virnucpro:0.2.0dev .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" -v "$PWD:/data" -w /data virnucpro:0.2.0dev virnucpro run reads.fa --models /data/models --outdir out
#   docker run --rm virnucpro:0.2.0dev --version     (options alone are virnucpro's)
#
# -u: the container's user is the image's (uid 1000) otherwise, which cannot write into a host folder
# of another uid ("cannot write out: permission denied"). With --read-only, add --tmpfs /tmp (torch
# needs a temporary folder; virnucpro never falls back to the current folder, your data).
#
# PyTorch's wheels on PyPI for Linux x86_64 bundle the CUDA libraries (torch 2.13: CUDA 13, which
# needs an NVIDIA driver >= 580 on the host); the host provides only the driver (--gpus / --nv).
# Every dependency of pyproject.toml is pinned here, inside its range there, and nothing else
# (tests/test_nextflow_static.py checks both); the pins are the versions the pipeline was tested with.
FROM python:3.12-slim-bookworm

# procps: `ps`, which Nextflow's task wrapper needs for its resource trace.
# gcc and libc6-dev: Triton (torch.compile and FlexAttention on a GPU) builds its kernel launchers
# with a C compiler at first use; without one the GPU fast path falls back to the reference path.
# libc6-dev is not pinned: it must be the version of the base image's libc6.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends procps=2:4.0.2-3 gcc=4:12.2.0-3 libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Singularity/Apptainer pass the host's environment in, the image's variables winning: no PYTHONPATH
# (a host `module load` sets one) and no user site-packages (~/.local, the host home is mounted), so
# a host numpy or h5py cannot shadow the pinned ones below.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONPATH="" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir \
        torch==2.13.0 \
        fair-esm==2.0.0 \
        tokenizers==0.23.3 \
        safetensors==0.8.0 \
        h5py==3.16.0 \
        numpy==2.4.6 \
        typer==0.29.2 \
        rich==15.0.0

# The package itself, without letting pip pick other versions of anything
COPY pyproject.toml README.md LICENSE /src/
COPY virnucpro /src/virnucpro
RUN pip install --no-cache-dir --no-deps /src \
    && pip check \
    && install -D -m 0644 /src/LICENSE /usr/share/doc/virnucpro/LICENSE \
    && rm -rf /src \
    && virnucpro --version

# PID 1: passes a stop (`docker stop`, Nextflow killing a task, AWS Batch) on to every process of the
# container and waits for them, so `virnucpro embed` saves its checkpoint (a shell as PID 1 drops it)
COPY bin/container_init.py /usr/local/bin/container_init.py
RUN chmod 0755 /usr/local/bin/container_init.py

# Non-root. Caches in /tmp and a world-writable home, because Nextflow runs the container as the
# calling user (docker -u $(id -u):$(id -g); Singularity/Apptainer as the user). Under Apptainer that
# /tmp is the host's, shared by a node's users: the default compile cache there is one folder per
# user, /tmp/virnucpro-<uid>/torch-compile (virnucpro creates it 0700 and uses it only if no other
# user can write to it), so XDG_CACHE_HOME is /tmp itself, not a folder the first user would own.
# Offline by default: models come from a models directory (--models), never from a hub at run
# time; `virnucpro models download` (the pipeline's download step) does not depend on these.
RUN useradd --create-home --uid 1000 --shell /bin/bash virnucpro \
    && chmod 1777 /home/virnucpro
ENV HOME=/home/virnucpro \
    XDG_CACHE_HOME=/tmp \
    HF_HOME=/tmp/virnucpro-cache/huggingface \
    TORCH_HOME=/tmp/virnucpro-cache/torch \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
USER 1000:1000
WORKDIR /home/virnucpro

ENTRYPOINT ["/usr/local/bin/container_init.py"]
CMD ["virnucpro", "--help"]
