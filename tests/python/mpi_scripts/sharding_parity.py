"""Sharded equals unsharded, through the Python API: switchyard.sharding.ShardedEngine on R
ranks against one process holding the whole ToyMoEStack, running every rank's micro-batch
as gradient accumulation, then torch.optim.AdamW and torch.nn.utils.clip_grad_norm_ (no
engine code). float64; 4 steps with accumulation 2 and clipping that bites.

Usage: mpirun -np R python sharding_parity.py EXPERT_PARALLEL
Prints "sharding ok rank=R" when everything matches.
"""

import sys

import torch

import switchyard
import switchyard.comm as comm
from switchyard.config import loads_config
from switchyard.dispatch import ExpertPlacement
from switchyard.nn import MoELayerOptions
from switchyard.sharding import ShardedEngine, ToyMoEStack

VOCAB, D, BLOCKS, HIDDEN, E = 24, 8, 4, 12, 4
ACCUM, STEPS, CLIP, WD = 2, 4, 0.05, 0.1


def make_model():
    torch.manual_seed(3)
    moe = MoELayerOptions()
    moe.d_model, moe.num_experts, moe.top_k, moe.ffn_hidden, moe.init_std = D, E, 2, 6, 0.2
    return ToyMoEStack(VOCAB, BLOCKS, HIDDEN, moe).double()


def batch(step, rank, a):
    g = torch.Generator().manual_seed(7919 * step + 101 * rank + a)
    return (torch.randint(VOCAB, (2, 5), generator=g), torch.randint(VOCAB, (2, 5), generator=g))


def main():
    switchyard.init()
    ep = int(sys.argv[1])
    world = comm.world()
    R, rank = world.size, world.rank
    cfg = loads_config(
        "", overrides=[f"parallel.expert_parallel={ep}", "parallel.shard_dense=true", f"train.grad_accum={ACCUM}",
                       f"train.grad_clip={CLIP}", f"train.weight_decay={WD}", "train.precision=fp64"])
    model = make_model()
    engine = ShardedEngine(model, cfg, world)

    ref = make_model()
    decay = [p for p in ref.parameters() if p.dim() >= 2]
    no_decay = [p for p in ref.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(cfg.train.beta1, cfg.train.beta2), eps=cfg.train.eps)
    for step in range(STEPS):
        lr = 1e-2 * (1 + step)
        out = engine.step([batch(step, rank, a) for a in range(ACCUM)], lr)
        opt.zero_grad()
        losses = []
        for r in range(R):
            for a in range(ACCUM):
                loss, aux = ref(*batch(step, r, a))
                ((loss + aux) / (R * ACCUM)).backward()
                losses.append(loss.item())
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP).item()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        want = sum(losses) / len(losses)
        assert abs(out["loss"] - want) < 1e-10, (step, out["loss"], want)
        assert abs(out["grad_norm"] - norm) < 1e-9 * norm, (step, out["grad_norm"], norm)
        assert out["clipped"] and not out["skipped"], out
    ref_params = dict(ref.named_parameters())
    for name, value in engine.gather_dense_parameters().items():
        torch.testing.assert_close(value, ref_params[name].detach(), rtol=1e-9, atol=1e-11, msg=name)
    experts = engine.local_expert_parameters()
    ids = torch.tensor(ExpertPlacement.contiguous(E, ep).local_experts(rank % ep))
    for b in range(1, BLOCKS, 2):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            name = f"blocks.{b}.experts.{proj}"
            torch.testing.assert_close(experts[name], ref_params[name].detach()[ids], rtol=1e-9, atol=1e-11, msg=name)
    mem = engine.memory_report()
    assert mem["allocator_current_bytes"] == mem["persistent_dense_bytes"], mem
    assert mem["persistent_dense_bytes"] <= mem["unsharded_dense_bytes"] // R + 64 * R, mem
    state = engine.shard_state_dict()
    assert int(state["step"]) == STEPS and "embed.flat.param" in state, sorted(state)
    print(f"sharding ok rank={rank}", flush=True)


if __name__ == "__main__":
    main()
