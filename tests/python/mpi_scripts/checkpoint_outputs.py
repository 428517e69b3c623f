"""A checkpoint loaded on this job's ranks gives the model outputs of the same checkpoint
loaded into one plain process (checkpoint.load_model): the resharding test.

Usage: mpirun -np R python checkpoint_outputs.py CHECKPOINT [KEY=VALUE ...]
The overrides change how the job is laid out (parallel.expert_parallel=R, ...). Prints, on
rank 0, "outputs sharded=<loss> single=<loss> step=<step>" with repr'd floats.
"""

import sys

import torch

import switchyard
import switchyard.comm as comm
from switchyard import checkpoint
from switchyard.nn import MoETransformer
from switchyard.sharding import ShardedEngine


def fixed_batch(cfg):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg.model.vocab_size, (2, cfg.data.seq_len + 1), generator=g)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def main():
    path, overrides = sys.argv[1], sys.argv[2:]
    info = switchyard.init()
    cfg = checkpoint.read_config(path, overrides)
    cfg.validate_for_world(info.world_size)
    torch.manual_seed(999)  # deliberately not the run's seed: every weight must come from the checkpoint
    model = MoETransformer.from_config(cfg)
    engine = ShardedEngine(model, cfg, comm.groups(cfg))
    loaded = checkpoint.load(path, engine, cfg)
    x, y = fixed_batch(cfg)
    # Every rank evaluates the same batch: the job-wide mean is that batch's loss.
    sharded = engine.eval_loss([(x, y)])
    if info.rank == 0:
        single_model = checkpoint.load_model(path).eval()
        with torch.no_grad():
            out = single_model(x, y)
        single = float(out.loss)  # eval_loss is the language-model loss alone
        print(f"outputs sharded={sharded!r} single={single!r} step={loaded['step']}", flush=True)


if __name__ == "__main__":
    main()
