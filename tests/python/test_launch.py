"""The launcher (python -m switchyard.launch, scripts/launch): the mpirun command it builds
from the launch: section -- hosts, hostfiles, procs_per_host, --np, forwarded variables --
its refusals (exit 2, the key named, no traceback), and one real 2-rank run on this machine."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from switchyard.config import loads_config
from switchyard.launch import PREFIX, LaunchError, layout, mpirun_command

REPO = Path(__file__).resolve().parents[2]
ROOT_FLAG = ["--allow-run-as-root"] if os.geteuid() == 0 else []
KILL = ["--mca", "odls_base_sigkill_timeout", "20"]

TWO_HOSTS = """\
moe:
  num_experts: 8
parallel:
  expert_parallel: 4
train:
  device: cpu
launch:
  hosts: [node1:4, node2:4]
  env: [SWITCHYARD_TEST_FORWARDED]
  mpirun_args: [--mca, btl_tcp_if_include, eth0]
"""


def _cfg(text: str, *overrides: str):
    return loads_config(textwrap.dedent(text), "test.yaml", overrides)


def _train(config: str, *overrides: str) -> list:
    cmd = [sys.executable, "-m", "switchyard.train", "--config", config]
    for kv in overrides:
        cmd += ["--set", kv]
    return cmd


def _launch(*args: str, env: dict | None = None, unset=()) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(REPO / "python"), OMP_NUM_THREADS="1", **(env or {}))
    for name in unset:
        full.pop(name, None)
    return subprocess.run([sys.executable, "-m", "switchyard.launch", *args], capture_output=True, text=True,
                          timeout=120, env=full, cwd=REPO)


def _printed(out: subprocess.CompletedProcess) -> list:
    """The command the launcher printed, split back into words."""
    lines = [line for line in out.stdout.splitlines() if line.startswith(PREFIX + " ")]
    assert len(lines) == 1, out.stdout + out.stderr
    return shlex.split(lines[0][len(PREFIX) + 1:])


# --- (a) two hosts: the exact command --------------------------------------------------------


def test_dry_run_of_two_hosts_prints_exactly_the_command(tmp_path):
    config = tmp_path / "two.yaml"
    config.write_text(TWO_HOSTS)
    out = _launch(str(config), "--dry-run", "--set", "train.steps=3", env={"SWITCHYARD_TEST_FORWARDED": "1"})
    assert out.returncode == 0, out.stderr
    expected = (["mpirun", "-np", "8", "--host", "node1:4,node2:4", *ROOT_FLAG,
                 "-x", "PYTHONPATH", "-x", "OMP_NUM_THREADS", "-x", "SWITCHYARD_TEST_FORWARDED", *KILL,
                 "--mca", "btl_tcp_if_include", "eth0"] + _train(str(config), "train.steps=3"))
    assert out.stdout.strip() == f"{PREFIX} {shlex.join(expected)}"  # one line, nothing else
    assert out.stderr == ""


def test_mpirun_command_matches_the_printed_line_and_forwards_overrides():
    cfg = _cfg(TWO_HOSTS, "launch.hosts=[a:8, b:8]")
    cmd = mpirun_command(cfg, "two.yaml", ["launch.hosts=[a:8, b:8]"], environ={"OMP_NUM_THREADS": "1"})
    assert cmd[:5] == ["mpirun", "-np", "16", "--host", "a:8,b:8"]
    train = _train("two.yaml", "launch.hosts=[a:8, b:8]")
    assert cmd[-len(train):] == train
    # Several remote hosts: no one-machine flags; the user's arguments after ours, verbatim.
    assert "--oversubscribe" not in cmd and "--bind-to" not in cmd
    i = cmd.index("odls_base_sigkill_timeout")
    assert cmd[i - 1:i + 5] == ["--mca", "odls_base_sigkill_timeout", "20", "--mca", "btl_tcp_if_include", "eth0"]


def test_localhost_and_no_hosts_are_one_machine_runs():
    cfg = _cfg("launch: {hosts: [localhost:2]}")
    assert mpirun_command(cfg, "c.yaml", environ={})[:8] == [
        "mpirun", "-np", "2", "--host", "localhost:2", "--bind-to", "none", "--oversubscribe"]
    cfg = _cfg("parallel: {expert_parallel: 2, data_parallel: 3}\nmoe: {num_experts: 4}\ntrain: {device: cpu}")
    assert mpirun_command(cfg, "c.yaml", environ={}, gpu_count=4)[:6] == [
        "mpirun", "-np", "6", "--bind-to", "none", "--oversubscribe"]


def test_one_machine_rank_count_comes_from_np_then_procs_per_host_then_gpus_then_parallel():
    text = "parallel: {expert_parallel: 2}\nmoe: {num_experts: 4}\n"
    assert layout(_cfg(text), gpu_count=0).np == 2                       # expert_parallel x max(1, 0)
    assert layout(_cfg(text), gpu_count=4).np == 4                       # train.device auto: one per GPU
    assert layout(_cfg(text, "train.device=cpu"), gpu_count=4).np == 2  # the CPU ignores GPUs
    assert layout(_cfg(text, "launch.procs_per_host=6"), gpu_count=4).np == 6
    assert layout(_cfg(text, "launch.procs_per_host=6"), np=8, gpu_count=4).np == 8


def test_a_user_sigkill_timeout_replaces_ours():
    # mpirun refuses an MCA parameter given twice.
    cfg = _cfg("launch: {mpirun_args: [--mca, odls_base_sigkill_timeout, '300']}")
    cmd = mpirun_command(cfg, "c.yaml", environ={}, gpu_count=0)
    assert cmd.count("odls_base_sigkill_timeout") == 1 and "300" in cmd and "60" not in cmd


# --- (b) hostfile -----------------------------------------------------------------------------


def test_hostfile_slots_count_ranks(tmp_path):
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("# the cluster\n\nnode1 slots=4   # first\nnode2 slots = 2 max_slots=8\nnode2 slots=2\n")
    cfg = _cfg(f"launch: {{hostfile: {hostfile}}}")
    cmd = mpirun_command(cfg, "c.yaml", environ={})
    # node1 4 + node2 2+2 (a host on two lines adds up, as in mpirun)
    assert cmd[:5] == ["mpirun", "-np", "8", "--hostfile", str(hostfile)]
    assert "--host" not in cmd and "--map-by" not in cmd and "--oversubscribe" not in cmd
    # procs_per_host on several hosts: the same ranks on each, --map-by ppr.
    cmd = mpirun_command(_cfg(f"launch: {{hostfile: {hostfile}, procs_per_host: 2}}"), "c.yaml", environ={})
    assert cmd[:7] == ["mpirun", "-np", "4", "--hostfile", str(hostfile), "--map-by", "ppr:2:node"]


def test_hostfile_host_without_slots_needs_slots_procs_per_host_or_np(tmp_path):
    # mpirun gives such a host one slot per core, which the launcher cannot see.
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("node1 slots=4\nnode2\n")
    with pytest.raises(LaunchError, match=r"host 'node2' in .*hosts.txt has no slots=N"):
        layout(_cfg(f"launch: {{hostfile: {hostfile}}}"))
    assert layout(_cfg(f"launch: {{hostfile: {hostfile}}}"), np=7).np == 7  # no capacity to check
    assert layout(_cfg(f"launch: {{hostfile: {hostfile}, procs_per_host: 3}}")).np == 6


def test_hostfile_with_a_bad_slots_value_names_file_and_line(tmp_path):
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("node1 slots=4\nnode2 slots=many\n")
    with pytest.raises(LaunchError, match=rf"{hostfile}:2: slots must be a positive integer, got 'many'"):
        layout(_cfg(f"launch: {{hostfile: {hostfile}}}"))


# --- (c) procs_per_host -----------------------------------------------------------------------


def test_procs_per_host_places_the_same_ranks_on_every_host():
    cfg = _cfg("launch: {hosts: [node1, node2, node3:8], procs_per_host: 4}")
    cmd = mpirun_command(cfg, "c.yaml", environ={})
    # Hosts written without slots take procs_per_host of them.
    assert cmd[:7] == ["mpirun", "-np", "12", "--host", "node1:4,node2:4,node3:8", "--map-by", "ppr:4:node"]
    with pytest.raises(LaunchError, match=r"launch.procs_per_host .* = 4 is more than the 2 slots of host 'b'"):
        layout(_cfg("launch: {hosts: [a:4, b:2], procs_per_host: 4}"))


# --- (d) --np that does not fit ---------------------------------------------------------------


def test_np_not_a_multiple_of_expert_parallel_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "two.yaml"
    config.write_text(TWO_HOSTS)
    out = _launch(str(config), "--dry-run", "--np", "6", env={"SWITCHYARD_TEST_FORWARDED": "1"})
    assert out.returncode == 2
    assert f"{config}: cannot run 6 ranks (--np 6)" in out.stderr
    assert "parallel.expert_parallel" in out.stderr and "Traceback" not in out.stderr
    assert PREFIX not in out.stdout  # nothing is printed as if it would run


def test_np_beyond_the_hosts_slots_is_refused():
    with pytest.raises(LaunchError, match=r"--np 12 is more than the 8 ranks that the slots of launch.hosts"):
        layout(_cfg(TWO_HOSTS), np=12)
    assert layout(_cfg(TWO_HOSTS), np=4).np == 4


def test_a_config_error_exits_2_with_its_message():
    out = _launch("configs/demo.yaml", "--dry-run", "--set", "launch.procs_per_host=-1")
    assert out.returncode == 2
    assert "launch.procs_per_host: must be >= 0, got -1" in out.stderr and "Traceback" not in out.stderr


# --- (e) missing hostfile ---------------------------------------------------------------------


def test_missing_hostfile_names_the_file_and_the_key(tmp_path):
    missing = tmp_path / "nope.txt"
    out = _launch("configs/demo.yaml", "--dry-run", "--set", "launch.hosts=[]", "--set", f"launch.hostfile={missing}")
    assert out.returncode == 2
    assert f"launch.hostfile (--set launch.hostfile={missing}): cannot read the hostfile '{missing}'" in out.stderr
    assert "No such file or directory" in out.stderr and "Traceback" not in out.stderr


# --- (f) environment forwarding ---------------------------------------------------------------


def test_env_names_are_forwarded_once_in_order_and_unset_ones_warned(tmp_path):
    config = tmp_path / "env.yaml"
    config.write_text("launch:\n  env: [SWITCHYARD_TEST_SET, SWITCHYARD_TEST_UNSET, PYTHONPATH, SWITCHYARD_TEST_SET]\n")
    out = _launch(str(config), "--dry-run", "--np", "1", env={"SWITCHYARD_TEST_SET": "x"},
                  unset=["SWITCHYARD_TEST_UNSET"])
    assert out.returncode == 0, out.stderr
    cmd = _printed(out)
    forwarded = [cmd[i + 1] for i, word in enumerate(cmd) if word == "-x"]
    assert forwarded == ["PYTHONPATH", "OMP_NUM_THREADS", "SWITCHYARD_TEST_SET", "SWITCHYARD_TEST_UNSET"]
    assert out.stderr.splitlines() == [
        "switchyard.launch: warning: SWITCHYARD_TEST_UNSET (launch.env) is not set here; the ranks will not get it"]


def test_omp_num_threads_is_forwarded_only_when_set():
    cfg = _cfg("train: {device: cpu}")
    assert "OMP_NUM_THREADS" not in mpirun_command(cfg, "c.yaml", environ={})
    assert "OMP_NUM_THREADS" in mpirun_command(cfg, "c.yaml", environ={"OMP_NUM_THREADS": "2"})


# --- the worked example in docs/multinode.md is what the tool prints --------------------------


def test_docs_two_node_example_is_the_tools_output():
    documented = [line for line in (REPO / "docs" / "multinode.md").read_text().splitlines()
                  if line.startswith(f"{PREFIX} mpirun -np 16")]
    assert len(documented) == 1
    out = _launch("configs/two_node_gpu.yaml", "--dry-run",
                  env={"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_HCA": "mlx5", "NCCL_DEBUG": "WARN"})
    assert out.returncode == 0, out.stderr

    def normal(words):  # the interpreter's path and the root flag depend on the machine
        words = [w for w in words if w != "--allow-run-as-root"]
        words[words.index("-m") - 1] = "PYTHON"
        return words

    assert normal(_printed(out)) == normal(shlex.split(documented[0][len(PREFIX) + 1:]))


# --- (g) a real launch on this machine --------------------------------------------------------

TINY = [
    "model.vocab_size=256", "model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
    "model.ffn_hidden=128", "model.max_seq_len=64", "moe.num_experts=4", "moe.top_k=2", "moe.ffn_hidden=64",
    "moe.num_shared_experts=1", "data.tokenizer=byte", "data.seq_len=32", "train.steps=2", "train.warmup_steps=1",
    "train.log_every=1", "train.eval_every=0", "checkpoint.save_every=0", "train.device=cpu",
]


def _real_launch(entry: list, run_dir: Path) -> None:
    args = [*entry, "configs/demo.yaml", "--np", "2"]
    for kv in TINY + [f"train.run_dir={run_dir}"]:
        args += ["--set", kv]
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), OMP_NUM_THREADS="1")
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert _printed(out)[:3] == ["mpirun", "-np", "2"]
    assert "training steps 1..2 of 2 on 2 rank(s)" in out.stdout, out.stdout[-2000:]
    with open(run_dir / "metrics.csv", newline="") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2"]


@pytest.mark.mpi
def test_module_launches_two_ranks_to_completion(tmp_path):
    _real_launch([sys.executable, "-m", "switchyard.launch"], tmp_path / "run")


@pytest.mark.mpi
def test_script_launches_two_ranks_to_completion(tmp_path):
    # scripts/launch runs scripts/install-deps and scripts/build first: quick in a built
    # clone (scripts/test builds before pytest), a full compile in a fresh one.
    if not (Path(os.environ.get("SWITCHYARD_BUILD_DIR", REPO / "build")) / "build.ninja").is_file():
        pytest.skip("this clone has no build/ (scripts/launch would compile everything first; run scripts/build)")
    _real_launch([str(REPO / "scripts" / "launch")], tmp_path / "run")
