"""Start-up config check and failures inside a distributed layer. One mode per run:

  same_config       every rank reads configs/demo.yaml: check_same_config passes.
  config_mismatch   rank 1 adds --set moe.top_k=1: every rank fails naming rank 1 and moe.top_k.
  placement_mismatch rank 1 uses another expert placement: every rank fails naming it.
  groups_config_mismatch  as config_mismatch, but only comm.groups(cfg) runs: it checks by itself.
  distribute_placement_mismatch  rank 1 distributes a layer with another placement: the
                    ExpertParallel it builds checks by itself.
  throw_in_layer    rank 1 feeds a distributed layer a wrong-width input: its error ends the
                    job while rank 0 waits inside the layer's all-to-all.

Usage: mpirun -np N python dispatch_failures.py MODE
"""

import sys

import torch

import switchyard
import switchyard.comm as comm
from switchyard.dispatch import ExpertPlacement, check_same_config, distribute
from switchyard.nn import MoELayer


def main(mode):
    info = switchyard.init()
    world = comm.world()
    if mode in ("same_config", "config_mismatch", "placement_mismatch"):
        overrides = ["moe.top_k=1"] if mode == "config_mismatch" and info.rank == 1 else []
        cfg = switchyard.load_config("configs/demo.yaml", overrides=overrides)
        E = cfg.moe.num_experts
        placement = ExpertPlacement.contiguous(E, world.size)
        if mode == "placement_mismatch" and info.rank == 1:
            placement = ExpertPlacement([e % world.size for e in range(E)], world.size)
        check_same_config(world, cfg, placement)
    elif mode == "groups_config_mismatch":
        overrides = ["model.d_model=128"] if info.rank == 1 else []
        comm.groups(switchyard.load_config("configs/demo.yaml", overrides=overrides))
    elif mode == "distribute_placement_mismatch":
        layer = MoELayer(d_model=8, num_experts=4, top_k=2, ffn_hidden=16)
        placement = ExpertPlacement([0, 1, 0, 1] if info.rank == 1 else [0, 0, 1, 1], world.size)
        distribute(layer, world, placement)
    elif mode == "throw_in_layer":
        torch.manual_seed(0)
        layer = MoELayer(d_model=8, num_experts=4, top_k=2, ffn_hidden=16)
        distribute(layer, world)
        x = torch.randn(6, 9 if info.rank == 1 else 8)
        layer(x)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"rank {info.rank}: survived {mode}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
