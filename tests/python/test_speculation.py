"""Speculative capacity in the expert-parallel dispatcher (docs/speculation.md): the
config section and options here; bitwise parity with the exact path, forced mispredictions,
the counters and Communicator.send_recv under mpirun -np 2 and 4
(mpi_scripts/speculation_parity.py)."""

import re
from pathlib import Path

import pytest

import switchyard
from switchyard.dispatch import SpeculationOptions

SCRIPTS = Path(__file__).parent / "mpi_scripts"
# Lines of different ranks may run together (no newline between them).
OK = r"speculation ok rank=(\d+) check=([a-z_]+?)(?=speculation ok|\s|$)"
CHECKS = ["send_recv", "capacities", "layer_topk_contiguous", "layer_topk_random",
          "layer_expert_choice_contiguous", "layer_expert_choice_random",
          "predicted_contiguous", "predicted_random", "model_topk", "model_gating_residual", "model_expert_choice"]


def test_speculation_section_defaults_capacity_on():
    cfg = switchyard.Config()
    assert cfg.to_dict()["speculation"] == {"capacity": True, "capacity_margin": 0.1, "routes": True}
    o = SpeculationOptions.from_config(cfg)
    assert o.capacity and o.capacity_margin == 0.1 and o.routes


def test_speculation_keys_parse_and_validate():
    repo = Path(__file__).resolve().parents[2]
    cfg = switchyard.load_config(repo / "configs" / "demo.yaml",
                                 ["speculation.capacity=false", "speculation.capacity_margin=0.5",
                                  "speculation.routes=false"])
    o = SpeculationOptions.from_config(cfg)
    assert not o.capacity and o.capacity_margin == 0.5 and not o.routes
    with pytest.raises(ValueError, match="capacity_margin"):
        switchyard.load_config(repo / "configs" / "demo.yaml", ["speculation.capacity_margin=-1"])


def test_negative_margin_is_rejected():
    with pytest.raises(ValueError, match="capacity_margin must be a finite number >= 0"):
        SpeculationOptions(capacity=True, capacity_margin=-0.1)


@pytest.mark.mpi
@pytest.mark.parametrize("np", [2, 4])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_speculation_is_bitwise_lossless(run_mpi, np, dtype):
    out = run_mpi(np, str(SCRIPTS / "speculation_parity.py"), dtype, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    found = set(re.findall(OK, out.stdout))
    assert found == {(str(r), c) for r in range(np) for c in CHECKS}, out.stdout


@pytest.mark.gpu
@pytest.mark.mpi
def test_speculation_on_cuda_through_nccl(run_mpi):
    import torch
    np = max(1, min(2, torch.cuda.device_count()))
    out = run_mpi(np, str(SCRIPTS / "speculation_parity.py"), "float32", "cuda", timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    found = set(re.findall(OK, out.stdout))
    assert found == {(str(r), "capacities_cuda") for r in range(np)}, out.stdout
