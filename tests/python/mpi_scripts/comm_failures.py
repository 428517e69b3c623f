"""Failures that must end the whole job with a message, never hang. One mode per run:

  bad_splits    rank 1 passes 3 send_splits to a 2-rank group: ValueError before anything
                is sent; rank 0 is already inside the all_to_all_v and is ended by the abort.
  mismatch      rank 0 sends 3 rows to rank 1, which expects 1: MPI fails inside the
                collective (truncation) and the failing rank reports it and aborts the job.
  bad_groups    parallel.expert_parallel = 3 on 4 ranks: every rank raises ValueError.

Usage: mpirun -np N python comm_failures.py MODE
"""

import sys

import torch

import switchyard
import switchyard.comm as comm


def main(mode):
    info = switchyard.init()
    world = comm.world()
    if mode == "bad_splits":
        x = torch.zeros(4, 2)
        splits = [1, 1, 2] if info.rank == 1 else [2, 2]
        comm.all_to_all_v(x, splits, [2, 2])
    elif mode == "mismatch":
        send_splits = [0, 3] if info.rank == 0 else [1, 0]
        recv_splits = [0, 1] if info.rank == 1 else [1, 0]
        comm.all_to_all_v(torch.ones(3 if info.rank == 0 else 1, 8), send_splits, recv_splits)
    elif mode == "bad_groups":
        cfg = switchyard.load_config("configs/demo.yaml", overrides=["parallel.expert_parallel=3", "moe.num_experts=9"])
        comm.groups(cfg, world)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"rank {info.rank}: survived {mode}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
