"""Auxiliary-loss-free balancing under the engine: after a few steps on rank-dependent
data, every rank's routers hold the same, nonzero selection bias: the engine moves it by
the load summed over the job, not by each rank's own load.

Usage: mpirun -np R python sharding_bias.py        Prints "bias ok rank=R".
"""

import torch

import switchyard
import switchyard.comm as comm
from switchyard.config import loads_config
from switchyard.nn import MoETransformer
from switchyard.sharding import ShardedEngine

CFG = """
model: {vocab_size: 256, d_model: 32, n_layers: 2, n_heads: 2, ffn_hidden: 64, max_seq_len: 16, moe_layer_freq: 1}
moe: {num_experts: 4, top_k: 2, ffn_hidden: 32, bias_update_rate: 0.01, aux_loss_coeff: 0.0}
parallel: {expert_parallel: 2, shard_dense: true}
train: {grad_accum: 1, lr: 1.0e-3, grad_clip: 0}
data: {seq_len: 16}
"""


def biases(model):
    return {k: v.clone() for k, v in model.named_buffers() if k.endswith("selection_bias")}


def main():
    info = switchyard.init()
    world = comm.world()
    cfg = loads_config(CFG, overrides=[f"parallel.expert_parallel={min(2, world.size)}"])
    torch.manual_seed(0)
    model = MoETransformer.from_config(cfg)
    engine = ShardedEngine(model, cfg, comm.groups(cfg))
    g = torch.Generator().manual_seed(100 + info.rank)  # every rank sees other tokens
    for _ in range(3):
        x = torch.randint(0, 256, (2, 16), generator=g)
        engine.step([(x, torch.roll(x, -1, 1))], lr=1e-3)
    mine = biases(model)
    assert len(mine) == 2, list(mine)
    for name, b in mine.items():
        assert b.abs().sum() > 0, f"{name} never moved"
        every = world.all_gather(b.contiguous()).view(world.size, -1)
        assert torch.equal(every, every[0].expand_as(every)), f"rank {info.rank}: {name} differs across ranks: {every}"
    print(f"bias ok rank={info.rank}", flush=True)


if __name__ == "__main__":
    main()
