"""switchyard.sharding.ShardedEngine from Python: sharded equals unsharded against
torch.optim.AdamW on 1, 2 and 4 ranks (mpi_scripts/sharding_parity.py), and a clear
TypeError for a model the engine cannot drive."""

from pathlib import Path

import pytest
import torch

import switchyard
import switchyard.comm as comm
from switchyard.config import loads_config
from switchyard.nn import MoELayer
from switchyard.sharding import ShardedEngine

SCRIPTS = Path(__file__).parent / "mpi_scripts"


@pytest.mark.parametrize("np,ep", [(1, 1), (2, 2), (4, 2)])
def test_sharded_equals_unsharded(run_mpi, np, ep):
    out = run_mpi(np, str(SCRIPTS / "sharding_parity.py"), str(ep), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("sharding ok") == np, out.stdout + out.stderr


def test_a_model_without_units_is_a_type_error():
    switchyard.init()
    cfg = loads_config("")
    with pytest.raises(TypeError, match="does not implement switchyard::nn::UnitSequence"):
        ShardedEngine(MoELayer(d_model=8, num_experts=2, top_k=1, ffn_hidden=4), cfg, comm.world())
    with pytest.raises(TypeError, match="expected a switchyard C\\+\\+ model"):
        ShardedEngine(torch.nn.Linear(2, 2), cfg, comm.world())


@pytest.mark.parametrize("np", [1, 2])
def test_aux_loss_free_bias_moves_identically_on_every_rank(run_mpi, np):
    out = run_mpi(np, str(SCRIPTS / "sharding_bias.py"), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("bias ok") == np, out.stdout + out.stderr
