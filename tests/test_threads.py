"""`--threads` never asks for more threads or worker processes than the CPUs this process may use."""

from __future__ import annotations

import os

from virnucpro.threads import POOL_VARIABLES, available_cpus, cpu_quota, limit_threads


def test_a_request_above_the_cpus_is_capped_with_a_warning(monkeypatch, capsys):
    for name in POOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cpus = available_cpus()
    assert limit_threads(cpus + 1000) == cpus
    assert f"--threads {cpus + 1000}" in capsys.readouterr().err
    assert all(os.environ[name] == str(cpus) for name in POOL_VARIABLES)


def test_a_request_within_the_cpus_is_kept_silently(monkeypatch, capsys):
    for name in POOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert limit_threads(1) == 1
    assert capsys.readouterr().err == ""


def test_prepare_with_a_thousand_threads_says_it_uses_the_cpus_it_has(tmp_path, run_cli, reference_dir):
    code, err = run_cli("prepare", reference_dir / "vanilla" / "test_with_orfs.fa", "--outdir", tmp_path / "p",
                        "--threads", "1000")
    assert code == 0, err
    assert f"--threads 1000: this process may use {available_cpus()} CPUs" in err


def test_compile_workers_follow_threads(tmp_path):
    """torch.compile starts one compile worker per CPU unless told: --threads tells it."""
    import subprocess
    import sys

    probe = ("from virnucpro.threads import limit_threads; limit_threads(1); "
             "import torch._inductor.config as c; print(c.compile_threads)")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_COMPILE_THREADS"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]


def test_pool_variables_in_the_environment_do_not_size_a_command(monkeypatch, reference_dir, tmp_path):
    """CONTRACTS.md: settings come from the command line. Without --threads, a user's OMP_NUM_THREADS=7
    (or MKL/OpenBLAS/compile-worker variable) is replaced by the CPUs this process may use: the torch
    thread count and every pool variable a command runs with (read when it ends, in a separate process:
    torch reads OMP_NUM_THREADS when it loads) are those CPUs."""
    import subprocess
    import sys

    cpus = available_cpus()
    user = "7" if cpus != 7 else "3"
    probe = ("import os, sys\n"
             "from virnucpro.cli import main\n"
             "from virnucpro.threads import POOL_VARIABLES\n"
             "try:\n"
             "    main(sys.argv[1:])\n"
             "except SystemExit as end:\n"
             "    import torch\n"
             "    print('SIZES', torch.get_num_threads(), *(os.environ[name] for name in POOL_VARIABLES))\n"
             "    raise\n")
    env = {**os.environ, **{name: user for name in POOL_VARIABLES}}
    done = subprocess.run([sys.executable, "-c", probe, "prepare", str(reference_dir / "vanilla" / "test_with_orfs.fa"),
                           "--outdir", str(tmp_path / "p")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    sizes = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("SIZES ")]
    assert sizes == [[str(cpus)] * (1 + len(POOL_VARIABLES))], done.stdout


def _cgroup(tmp_path, files: dict[str, str]):
    """A cgroup folder (the `root` given to `available_cpus`) holding these files."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_containers_cpu_quota_caps_the_default(tmp_path, monkeypatch):
    """`docker --cpus 0.5` / a Kubernetes limit sets a CFS quota, not the affinity mask: the default
    used every CPU of the machine. cgroup v2 (cpu.max) and v1 (cfs_quota_us / cfs_period_us); a
    fraction of a CPU is rounded up (2.4 CPUs' worth of time keeps 3 threads busy)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert available_cpus(_cgroup(tmp_path / "v2", {"cpu.max": "50000 100000\n"})) == 1  # 0.5 CPU: at least 1
    for quota, cpus in (("120000", 2), ("150000", 2), ("240000", 3), ("2000000", 8)):
        assert available_cpus(_cgroup(tmp_path / quota, {"cpu.max": f"{quota} 100000\n"})) == cpus, quota
    assert available_cpus(_cgroup(tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "100000\n",
                                                    "cpu/cpu.cfs_period_us": "100000\n"})) == 1


def test_no_quota_or_an_unreadable_one_leaves_the_affinity_count(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    for number, files in enumerate([{"cpu.max": "max 100000\n"},
                                    {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
                                    {"cpu.max": "lots of cpus\n"}, {"cpu.max": "50000 0\n"},
                                    {"cpu/cpu.cfs_quota_us": "100000\n"}, {}]):
        assert available_cpus(_cgroup(tmp_path / str(number), files)) == affinity, files


def test_a_quota_on_a_nested_cgroup_or_one_above_it_caps_the_default(tmp_path):
    """`systemd-run -p CPUQuota=` or Apptainer `--cpus` without a cgroup namespace set the quota on the
    process's own cgroup below the mounted root (named in /proc/self/cgroup), not on the root: only
    the root was read, so the default used every CPU. The smallest quota on the way up counts."""
    def quota(files, membership):
        (tmp_path / "membership").write_text(membership)
        return cpu_quota(_cgroup(tmp_path / str(len(list(tmp_path.iterdir()))), files), tmp_path / "membership")

    v2 = {"cpu.max": "max 100000\n", "user.slice/run.scope/cpu.max": "50000 100000\n"}
    assert quota(v2, "0::/user.slice/run.scope\n") == 0.5
    middle = {"cpu.max": "max 100000\n", "a/cpu.max": "150000 100000\n", "a/b/cpu.max": "max 100000\n",
              "a/b/c/cpu.max": "300000 100000\n"}
    assert quota(middle, "0::/a/b/c\n") == 1.5  # the ancestor's lower quota limits the child too
    v1 = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
          "cpu/slurm/job_7/cpu.cfs_quota_us": "200000\n", "cpu/slurm/job_7/cpu.cfs_period_us": "100000\n"}
    assert quota(v1, "4:memory:/elsewhere\n3:cpu,cpuacct:/slurm/job_7\n0::/\n") == 2.0
    # a path the mount does not show (a container's own cgroup mounted as its root): the root counts
    assert quota({"cpu.max": "100000 100000\n"}, "0::/docker/0123abcd\n") == 1.0
    # nothing escapes the mounted root, whatever the membership file says
    outside = {"cpu.max": "max 100000\n", "../cpu.max": "10000 100000\n"}
    assert quota(outside, "0::/../..\n") is None
    # a quota too large for a float is none (it raised OverflowError, a traceback)
    assert quota({"cpu.max": "1" + "0" * 400 + " 1\n"}, "0::/\n") is None
