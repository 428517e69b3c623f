"""switchyard.load_config and `python -m switchyard.config`: the Python face of the C++
config. The parsing rules themselves are tested in tests/cpp/config; here: the binding
(attribute access, dicts, round trips, errors as ConfigError with the C++ message) and
the command line's exit codes and messages."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import switchyard
from switchyard.config import ConfigError, loads_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The subprocess imports the same switchyard package as this test.
    package_parent = str(Path(switchyard.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "switchyard.config", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


# ---- load_config and the Config object ---------------------------------------------------


def test_demo_config_loads():
    cfg = switchyard.load_config(DEMO)
    assert isinstance(cfg, switchyard.Config)
    assert cfg.model.n_layers == 4
    assert cfg.model.d_model == 256
    assert cfg.model.dtype == "float32"
    assert cfg.moe.num_experts == 8 and cfg.moe.top_k == 2
    assert cfg.moe.num_shared_experts == 1
    assert cfg.parallel.expert_parallel == 2
    assert cfg.train.device == "cpu"
    assert cfg.launch.hosts == ["localhost:2"]
    cfg.validate_for_world(2)


def test_values_have_python_types():
    cfg = switchyard.load_config(str(DEMO))
    d = cfg.to_dict()
    assert list(d) == ["model", "moe", "parallel", "train", "data", "checkpoint", "placement", "launch", "speculation"]
    assert type(d["moe"]["top_k"]) is int
    assert type(d["train"]["lr"]) is float and d["train"]["lr"] == 1e-3
    assert type(d["moe"]["renormalize"]) is bool
    assert d["launch"]["env"] == []
    assert cfg.moe.to_dict() == d["moe"]
    assert cfg.train.lr == d["train"]["lr"]
    assert "top_k" in dir(cfg.moe) and "moe" in dir(cfg)
    assert repr(cfg.moe).startswith("moe(num_experts=8, top_k=2,")


def test_defaults():
    assert switchyard.Config() == loads_config("")
    assert switchyard.Config().moe.top_k == 2
    assert switchyard.Config().source_of("moe.top_k") == "default"


def test_overrides():
    cfg = switchyard.load_config(DEMO, overrides=["moe.top_k=1", "launch.hosts=[a:2, b:2]", "train.lr=3e-4"])
    assert cfg.moe.top_k == 1
    assert cfg.launch.hosts == ["a:2", "b:2"]
    assert cfg.train.lr == 3e-4
    assert cfg.source_of("moe.top_k") == "--set moe.top_k=1"
    assert cfg.source_of("moe.num_experts") == f"{DEMO}:20"

    base = switchyard.load_config(DEMO)
    changed = base.with_overrides(["moe.top_k=1"])
    assert changed.moe.top_k == 1 and base.moe.top_k == 2


def test_yaml_round_trip_and_pickle():
    cfg = switchyard.load_config(DEMO, overrides=["train.run_dir=runs/a \"b\"", "launch.env=[OMP_NUM_THREADS]"])
    back = loads_config(cfg.to_yaml(), "dump.yaml")
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_fingerprint_covers_the_model_not_the_run():
    cfg = switchyard.load_config(DEMO)
    fp = cfg.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert switchyard.load_config(DEMO).fingerprint() == fp
    assert cfg.with_overrides(["train.steps=5", "train.run_dir=x"]).fingerprint() == fp
    assert cfg.with_overrides(["moe.top_k=1"]).fingerprint() != fp


def test_config_is_read_only():
    cfg = switchyard.load_config(DEMO)
    with pytest.raises(AttributeError, match="read-only"):
        cfg.moe.top_k = 3
    with pytest.raises(AttributeError, match="did you mean 'model'"):
        cfg.mdoel
    with pytest.raises(AttributeError, match="did you mean 'top_k'"):
        cfg.moe.tpo_k


# ---- errors ---------------------------------------------------------------------------


def test_errors_name_file_line_and_key(tmp_path):
    path = write(tmp_path, "model:\n  d_model: 64\nmoe:\n  top_k: two\n")
    with pytest.raises(ValueError) as info:
        switchyard.load_config(path)
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == f'{path}:4: moe.top_k: expected an integer, got "two"'


def test_unknown_key_suggests(tmp_path):
    path = write(tmp_path, "moe:\n  tpo_k: 2\n")
    with pytest.raises(ConfigError, match=r"run.yaml:2: moe.tpo_k: unknown key; did you mean 'top_k'\?"):
        switchyard.load_config(path)


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError) as info:
        switchyard.load_config(DEMO, overrides=["moe.top_k=0"])
    assert str(info.value) == "--set moe.top_k=0: moe.top_k: must be >= 1, got 0"
    with pytest.raises(ConfigError, match="--set moe.num_experts=5: moe.num_experts: num_experts 5 is not divisible"):
        switchyard.load_config(DEMO, overrides=["moe.num_experts=5"])


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"'{missing}' does not exist"):
        switchyard.load_config(missing)


def test_world_size_checks():
    cfg = switchyard.load_config(DEMO)
    with pytest.raises(ConfigError, match=r"demo.yaml:\d+: parallel.expert_parallel: world size 3 is not a multiple"):
        cfg.validate_for_world(3)


# ---- the command line -----------------------------------------------------------------


def test_cli_check_ok():
    res = run_cli("check", DEMO)
    assert res.returncode == 0, res.stderr
    assert "ok (fingerprint" in res.stdout


def test_cli_check_bad_file(tmp_path):
    path = write(tmp_path, "moe:\n  top_k: two\n")
    res = run_cli("check", path)
    assert res.returncode == 1
    # The last line: anything a library prints on import comes before it.
    assert res.stderr.strip().splitlines()[-1] == f'error: {path}:2: moe.top_k: expected an integer, got "two"'
    assert res.stdout == ""


def test_cli_check_malformed_yaml(tmp_path):
    path = write(tmp_path, "model:\n  d_model: [1, 2\n")
    res = run_cli("check", path)
    assert res.returncode == 1
    assert f"error: {path}:3: invalid YAML" in res.stderr


def test_cli_check_missing_file(tmp_path):
    res = run_cli("check", tmp_path / "absent.yaml")
    assert res.returncode == 1
    assert "absent.yaml' does not exist" in res.stderr


def test_cli_overrides_and_world_size():
    res = run_cli("check", DEMO, "--set", "moe.top_k=9")
    assert res.returncode == 1
    assert "--set moe.top_k=9: moe.top_k: top_k 9 exceeds the 8 experts" in res.stderr
    assert run_cli("check", DEMO, "--set", "moe.top_k=1", "--world-size", "2").returncode == 0
    res = run_cli("check", DEMO, "--world-size", "3")
    assert res.returncode == 1 and "world size 3" in res.stderr


def test_cli_dump_loads_back():
    res = run_cli("check", DEMO, "--set", "moe.top_k=1", "--dump")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("model:\n")
    assert loads_config(res.stdout) == switchyard.load_config(DEMO, ["moe.top_k=1"])


def test_cli_docs_prints_the_reference():
    res = run_cli("docs")
    assert res.returncode == 0, res.stderr
    assert res.stdout == switchyard.config.reference_markdown()
    assert "| `moe.top_k` | int |" in res.stdout
