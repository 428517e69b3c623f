"""Turn a config's ``launch:`` section into the ``mpirun`` command of a job, print it, run it.

    python -m switchyard.launch configs/demo.yaml [--dry-run] [--np N] [--set key=value ...]
    scripts/launch configs/demo.yaml ...      # the same, after scripts/install-deps and build

The command is printed on one line, shell-quoted, after ``[switchyard.launch]``; then this
process becomes ``mpirun`` (``--dry-run`` stops after printing). The ``--set`` overrides
apply to the config read here (``--set launch.hosts=[a:8,b:8]`` works) and are forwarded to
every rank. ``mpirun_command()`` returns the same command as a list, for tests and scripts.

Exit status: what ``mpirun`` returns; 2, with the reason on stderr and no traceback, for a
config that does not load or a job that does not fit it (the message names the config
file and the keys). docs/multinode.md describes the command it builds.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

PREFIX = "[switchyard.launch]"

# mpirun's grace period, in seconds. On SIGINT/SIGTERM, mpirun (Open MPI 4.1) sends the
# ranks SIGCONT, waits odls_base_sigkill_timeout seconds, sends SIGTERM, waits as long again,
# then sends SIGKILL (measured: docs/multinode.md, "Stopping a job"). The default, 1 s, is
# far too short for a rank to write a checkpoint after SIGTERM; switchyard ranks use these
# 20 s for that (docs/checkpoints.md). The price: SIGTERM reaches the ranks 20 s after
# Ctrl-C, and mpirun itself exits only after both waits. SIGUSR1 to mpirun reaches the ranks
# at once and is the prompt way to stop a job with a checkpoint.
SIGKILL_TIMEOUT_S = 20
_SIGKILL_PARAM = "odls_base_sigkill_timeout"

# The python/ folder that holds this package: every rank must import the same switchyard.
PYTHON_DIR = str(Path(__file__).resolve().parent.parent)


class LaunchError(Exception):
    """The job cannot be launched as configured; the message names the file and the keys."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int  # ranks this host may take; 0 = unknown (a hostfile line without slots=)


@dataclass(frozen=True)
class Layout:
    """Where the ranks go: the result of reading ``launch:`` (and ``--np``)."""

    np: int
    hosts: Tuple[Host, ...]  # from launch.hosts or the hostfile; empty = this machine, no list
    hostfile: str  # launch.hostfile, or ""
    ppr: int  # > 0: --map-by ppr:<ppr>:node (launch.procs_per_host on several hosts)
    one_machine: bool  # every rank on this machine: --oversubscribe --bind-to none
    np_from: str  # what set np, for messages


def _local_names() -> set:
    name = socket.gethostname()
    return {"localhost", "127.0.0.1", "::1", name, name.split(".")[0]}


def _parse_slots(text: str, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise LaunchError(f"{where}: slots must be a positive integer, got {text!r}")
    return int(text)


def _parse_host_item(item: str, where: str) -> Tuple[str, Optional[int]]:
    """``host`` or ``host:slots`` -> (host, slots or None). The config has checked the form."""
    name, sep, slots = item.rpartition(":")
    if not sep:
        return item, None
    return name, _parse_slots(slots, where)


def read_hostfile(path: str, origin: str = "launch.hostfile") -> List[Tuple[str, Optional[int]]]:
    """The hosts of an Open MPI hostfile, in order: ``(host, slots or None)``.

    Lines are ``host [slots=N] [max_slots=M ...]``; ``#`` starts a comment; blank lines are
    skipped. A host on several lines has the sum of their slots (as in mpirun). None: no
    ``slots=`` (mpirun then gives the host one slot per core, which we cannot know here)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise LaunchError(f"{origin}: cannot read the hostfile {path!r}: {reason}") from None
    hosts: dict = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        words = re.sub(r"\s*=\s*", "=", line.split("#", 1)[0]).split()
        if not words:
            continue
        where = f"{path}:{lineno}"
        slots = None
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if sep and key == "slots":
                slots = _parse_slots(value, where)
        name = words[0]
        if name in hosts:
            before = hosts[name]
            hosts[name] = None if before is None or slots is None else before + slots
        else:
            hosts[name] = slots
    if not hosts:
        raise LaunchError(f"{origin}: the hostfile {path!r} lists no hosts")
    return list(hosts.items())


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def layout(cfg, np: Optional[int] = None, gpu_count: Optional[int] = None) -> Layout:
    """Read ``launch:`` into a :class:`Layout` and check ``np`` against the hosts' capacity.

    ``gpu_count`` stands for the visible GPUs (None: ask torch); it matters only for a
    one-machine run without ``--np`` or ``launch.procs_per_host``."""
    launch = cfg.launch
    ppr = launch.procs_per_host
    if launch.hosts:
        key = "launch.hosts"
        origin = f"{key} ({cfg.source_of(key)})"
        listed = [_parse_host_item(item, origin) for item in launch.hosts]
        names = [name for name, _ in listed]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise LaunchError(f"{origin}: host {twice[0]!r} is listed more than once; list it once with "
                              f"all its slots ({twice[0]}:N)")
        hostfile = ""
    elif launch.hostfile:
        key = "launch.hostfile"
        origin = f"{key} ({cfg.source_of(key)})"
        listed = read_hostfile(launch.hostfile, origin)
        hostfile = launch.hostfile
        uncounted = [name for name, slots in listed if slots is None]
        if uncounted and ppr == 0 and np is None:
            raise LaunchError(f"{origin}: host {uncounted[0]!r} in {launch.hostfile} has no slots=N, so its "
                              f"ranks cannot be counted here (mpirun would give it one per core): write "
                              f"slots=N, set launch.procs_per_host, or pass --np")
    else:
        return _one_machine_layout(cfg, np, gpu_count)

    hosts = []
    for name, slots in listed:
        if ppr > 0 and slots is not None and ppr > slots:
            raise LaunchError(f"launch.procs_per_host ({cfg.source_of('launch.procs_per_host')}) = {ppr} is more "
                              f"than the {slots} slots of host {name!r} in {origin}")
        # launch.hosts: a host written without slots takes procs_per_host ranks, or 1 (the
        # rule of mpirun --host). A hostfile host without slots: 0 = unknown.
        default = ppr if ppr > 0 else (0 if hostfile else 1)
        hosts.append(Host(name, slots if slots is not None else default))
    per_host = [ppr if ppr > 0 else h.slots for h in hosts]
    capacity = sum(per_host) if all(per_host) else None
    how = (f"launch.procs_per_host {ppr} x {len(hosts)} hosts of {origin}" if ppr > 0
           else f"the slots of {origin}")
    if np is None:
        np, np_from = capacity, how
    else:
        if capacity is not None and np > capacity:
            raise LaunchError(f"--np {np} is more than the {capacity} ranks that {how} allow; "
                              f"raise the slots or pass a smaller --np")
        np_from = f"--np {np}"
    one_machine = all(h.name in _local_names() for h in hosts)
    return Layout(np, tuple(hosts), hostfile, ppr if ppr > 0 and len(hosts) > 1 else 0, one_machine, np_from)


def _one_machine_layout(cfg, np: Optional[int], gpu_count: Optional[int]) -> Layout:
    if np is not None:
        np_from = f"--np {np}"
    elif cfg.launch.procs_per_host > 0:
        np = cfg.launch.procs_per_host
        np_from = f"launch.procs_per_host ({cfg.source_of('launch.procs_per_host')})"
    else:
        gpus = 0
        if cfg.train.device in ("cuda", "auto"):
            gpus = _visible_gpus() if gpu_count is None else gpu_count
        if gpus > 0:
            np, np_from = gpus, f"one rank per visible GPU (train.device: {cfg.train.device})"
        else:
            ep, dp = cfg.parallel.expert_parallel, cfg.parallel.data_parallel
            np = ep * max(1, dp)
            np_from = f"parallel.expert_parallel {ep} x max(1, parallel.data_parallel {dp})"
    return Layout(np, (), "", 0, True, np_from)


def _sets_sigkill_timeout(mpirun_args: Sequence[str]) -> bool:
    return any(_SIGKILL_PARAM in arg for arg in mpirun_args)


def forwarded_env(cfg, environ: Mapping[str, str]) -> List[str]:
    """Names passed with ``-x``: PYTHONPATH, OMP_NUM_THREADS when set, then launch.env."""
    names = ["PYTHONPATH"] + (["OMP_NUM_THREADS"] if "OMP_NUM_THREADS" in environ else []) + list(cfg.launch.env)
    return list(dict.fromkeys(names))  # dedupe, keep the first position


def mpirun_command(cfg, config_path: str, overrides: Iterable[str] = (), np: Optional[int] = None,
                   python: str = sys.executable, environ: Optional[Mapping[str, str]] = None,
                   gpu_count: Optional[int] = None) -> List[str]:
    """The ``mpirun`` command that runs ``python -m switchyard.train`` for ``cfg``.

    ``cfg`` is the config loaded from ``config_path`` with ``overrides`` (which are also
    forwarded to the ranks); ``np`` is ``--np``. Raises :class:`LaunchError` when the ranks
    do not fit the hosts or the config (``cfg.validate_for_world``)."""
    from .config import ConfigError

    environ = os.environ if environ is None else environ
    overrides = list(overrides)
    where = layout(cfg, np, gpu_count)
    try:
        cfg.validate_for_world(where.np)
    except ConfigError as e:
        raise LaunchError(f"{config_path}: cannot run {where.np} ranks ({where.np_from}): {e}") from None

    cmd = ["mpirun", "-np", str(where.np)]
    if where.hostfile:
        cmd += ["--hostfile", where.hostfile]
    elif where.hosts:
        cmd += ["--host", ",".join(f"{h.name}:{h.slots}" for h in where.hosts)]
    if where.ppr > 0:
        cmd += ["--map-by", f"ppr:{where.ppr}:node"]
    if where.one_machine:
        # A small development machine: more ranks than cores is expected, and binding every
        # rank to one core would pile them onto the same few.
        cmd += ["--bind-to", "none", "--oversubscribe"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    for name in forwarded_env(cfg, environ):
        cmd += ["-x", name]
    extra = list(cfg.launch.mpirun_args)
    # mpirun refuses an MCA parameter given twice: the user's own value wins.
    if not _sets_sigkill_timeout(extra):
        cmd += ["--mca", _SIGKILL_PARAM, str(SIGKILL_TIMEOUT_S)]
    cmd += extra
    cmd += [python, "-m", "switchyard.train", "--config", str(config_path)]
    for kv in overrides:
        cmd += ["--set", kv]
    return cmd


def _with_python_dir(pythonpath: str) -> str:
    parts = [p for p in pythonpath.split(os.pathsep) if p]
    return os.pathsep.join([PYTHON_DIR] + [p for p in parts if p != PYTHON_DIR])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m switchyard.launch",
        description="Build the mpirun command of a training job from the config's launch: section, "
                    "print it, and run it.")
    parser.add_argument("config", help="the run's YAML config (e.g. configs/demo.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    parser.add_argument("--np", type=int, metavar="N",
                        help="number of ranks (default: from launch:, the visible GPUs, or the parallel: section)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, here and on every rank (repeatable)")
    args = parser.parse_args(argv)
    if args.np is not None and args.np < 1:
        parser.error(f"--np must be at least 1, got {args.np}")

    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        cmd = mpirun_command(cfg, args.config, args.overrides, np=args.np)
    except (ConfigError, LaunchError) as e:
        print(f"switchyard.launch: error: {e}", file=sys.stderr, flush=True)
        return 2

    for name in dict.fromkeys(cfg.launch.env):
        if name not in os.environ:
            print(f"switchyard.launch: warning: {name} (launch.env) is not set here; the ranks will not get it",
                  file=sys.stderr, flush=True)
    os.environ["PYTHONPATH"] = _with_python_dir(os.environ.get("PYTHONPATH", ""))
    print(f"{PREFIX} {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    if not _sets_sigkill_timeout(cfg.launch.mpirun_args):
        # Nothing visible happens for a while after Ctrl-C: say so, and the prompt way, first.
        print(f"switchyard.launch: on Ctrl-C mpirun sends the ranks SIGTERM after {SIGKILL_TIMEOUT_S} s "
              f"and SIGKILL {SIGKILL_TIMEOUT_S} s later; to stop at once with a checkpoint: "
              f"kill -USR1 <mpirun pid>", file=sys.stderr, flush=True)
    if shutil.which(cmd[0]) is None:
        print("switchyard.launch: error: mpirun not found on PATH; install Open MPI (scripts/install-deps)",
              file=sys.stderr, flush=True)
        return 2
    os.execvp(cmd[0], cmd)  # does not return: mpirun's exit status is the job's
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
