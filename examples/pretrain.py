"""Pre-training with switchyard's Python API, without the CLI: the loop of
``python -m switchyard.train`` reduced to its bones (no evaluation, metrics files or plots).

    mpirun -np 2 python examples/pretrain.py --config configs/demo.yaml --set train.steps=20
    python examples/pretrain.py --config configs/demo.yaml --set parallel.expert_parallel=1

Every rank runs this file. The model is built identically on each (same seed); the engine
then makes its MoE layers expert-parallel and shards the dense parameters over the ranks.
"""

import argparse
import math

import torch

import switchyard
import switchyard.comm as comm
from switchyard.data import build_dataset
from switchyard.nn import MoETransformer
from switchyard.sharding import ShardedEngine
from switchyard.training import learning_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (repeatable)")
    args = parser.parse_args()

    switchyard.init()                                        # MPI: under mpirun or alone
    cfg = switchyard.load_config(args.config, overrides=args.set)
    world = comm.world()
    groups = comm.groups(cfg, world)                         # checks every rank read the same config
    rank, t = world.rank, cfg.train

    torch.manual_seed(t.seed)                                # the same initial weights everywhere
    model = MoETransformer.from_config(cfg)
    engine = ShardedEngine(model, cfg, groups)               # expert parallelism + sharded AdamW
    train_data, _, _ = build_dataset(cfg, rank, world.size)  # this rank's disjoint samples

    loss = math.nan
    for step in range(t.steps):
        lr = learning_rate(step, t)                          # warm-up, then cosine to min_lr
        micro = [train_data.next_batch(t.micro_batch_size) for _ in range(t.grad_accum)]
        out = engine.step(micro, lr)                         # forward, backward, reduce, AdamW
        loss = out["loss"]                                   # mean over ranks and micro-batches
        if rank == 0 and ((step + 1) % t.log_every == 0 or step + 1 == t.steps):
            print(f"step {step + 1}/{t.steps}  lr {lr:.3e}  loss {loss:.4f}  "
                  f"aux {out['aux_loss']:.4f}  grad_norm {out['grad_norm']:.3f}", flush=True)
    if rank == 0:
        print(f"final loss {loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
