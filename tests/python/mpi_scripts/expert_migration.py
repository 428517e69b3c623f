"""Live re-placement moves experts losslessly and never changes results (ShardedEngine.
set_expert_placements, csrc/switchyard/sharding/expert_migration.cpp). float64 ToyMoEStack.

  roundtrip:   after 2 steps (non-zero AdamW moments) move every layer to a random uneven
               placement: each rank's rows are exactly the original rows of its new experts
               (weights and both moments); moving back restores every tensor bitwise; the
               reported experts sent equal the experts that changed rank.
  disagree:    rank 1 passes another map: every rank refuses before anything moves, naming
               the disagreement (all ranks must adopt the identical placement).
  same_losses: 6 steps without re-placement against 6 steps with a new random placement
               before steps 2 and 4: equal losses and gradient norms (1e-12 relative), equal
               final weights of every expert and every dense parameter.

Usage: mpirun -np R python expert_migration.py roundtrip|disagree|same_losses EXPERT_PARALLEL
Prints "migration ok rank=R" when everything matches.
"""

import sys

import torch

import switchyard
import switchyard.comm as comm
from switchyard.config import loads_config
from switchyard.dispatch import ExpertPlacement
from switchyard.nn import MoELayerOptions
from switchyard.sharding import ShardedEngine, ToyMoEStack

VOCAB, D, BLOCKS, HIDDEN, E, ACCUM = 24, 8, 4, 12, 8, 2
FIELDS = ("param", "exp_avg", "exp_avg_sq")


def make_engine(world, ep):
    torch.manual_seed(3)
    moe = MoELayerOptions()
    moe.d_model, moe.num_experts, moe.top_k, moe.ffn_hidden, moe.init_std = D, E, 2, 6, 0.2
    model = ToyMoEStack(VOCAB, BLOCKS, HIDDEN, moe).double()
    cfg = loads_config("", overrides=[f"parallel.expert_parallel={ep}", "parallel.shard_dense=true",
                                      f"train.grad_accum={ACCUM}", "train.precision=fp64"])
    return ShardedEngine(model, cfg, world)


def batch(step, rank, a):
    g = torch.Generator().manual_seed(7919 * step + 101 * rank + a)
    return (torch.randint(VOCAB, (3, 5), generator=g), torch.randint(VOCAB, (3, 5), generator=g))


def random_placements(engine, ep, seed):
    """Every rank draws the same maps: uneven (some ranks hold 1 expert), never an empty rank."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for _ in engine.expert_layers():
        ranks = list(range(ep)) + torch.randint(ep, (E - ep,), generator=g).tolist()
        maps.append([ranks[i] for i in torch.randperm(E, generator=g).tolist()])
    return maps


def expert_state(engine):
    """This rank's expert rows: {key: tensor} for every expert parameter and AdamW moment."""
    names = [l["name"] for l in engine.expert_layers()]
    return {k: v.clone() for k, v in engine.shard_state_dict().items()
            if any(k.startswith(n + ".experts.") for n in names) and k.rsplit(".", 1)[1] in FIELDS}


def full_expert_state(engine, world, ep):
    """Every expert's rows by global id, from the contiguous placement (equal rows per rank)."""
    local = expert_state(engine)
    group_ranks = [r for r in range(world.size) if r // ep == world.rank // ep]
    out = {}
    for key, value in local.items():
        gathered = world.all_gather(value.contiguous())  # [world * L, ...]: rank-major
        rows = gathered.view(world.size, *value.shape)[group_ranks]
        out[key] = rows.reshape(-1, *value.shape[1:])
    return out


def roundtrip(world, ep):
    engine = make_engine(world, ep)
    for step in range(2):
        engine.step([batch(step, world.rank, a) for a in range(ACCUM)], 1e-2)
    layers = engine.expert_layers()
    contiguous = [l["placement"] for l in layers]
    before = expert_state(engine)
    full = full_expert_state(engine, world, ep)
    maps = random_placements(engine, ep, seed=11)
    report = engine.set_expert_placements(maps)
    assert [l["placement"] for l in engine.expert_layers()] == maps
    me = world.rank % ep
    for layer, m in zip(layers, maps):
        ids = torch.tensor(ExpertPlacement(m, ep).local_experts(me))
        for key, value in expert_state(engine).items():
            if key.startswith(layer["name"] + "."):
                assert torch.equal(value, full[key][ids]), (key, ids)
    moved = sum(sum(1 for e in range(E) if m[e] == me and c[e] != me) for m, c in zip(maps, contiguous))
    assert report["experts_received"] == moved, (report, moved)
    total_sent = torch.tensor([float(report["experts_sent"])], dtype=torch.float64)
    world.all_reduce(total_sent)
    changed = sum(sum(1 for e in range(E) if m[e] != c[e]) for m, c in zip(maps, contiguous))
    assert total_sent.item() == changed * (world.size // ep), (total_sent.item(), changed)
    engine.set_expert_placements(contiguous)
    after = expert_state(engine)
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key


def disagree(world, ep):
    engine = make_engine(world, ep)
    before = expert_state(engine)
    maps = random_placements(engine, ep, seed=5 + (world.rank == 1))
    try:
        engine.set_expert_placements(maps)
    except ValueError as e:
        assert "the new expert placements" in str(e) and "differ" in str(e), str(e)
    else:
        raise AssertionError("ranks with different placements were not refused")
    after = expert_state(engine)
    assert all(torch.equal(after[k], before[k]) for k in before)
    engine.step([batch(0, world.rank, a) for a in range(ACCUM)], 1e-2)  # still usable


def same_losses(world, ep):
    fixed, moving = make_engine(world, ep), make_engine(world, ep)
    for step in range(6):
        if step in (2, 4):
            moving.set_expert_placements(random_placements(moving, ep, seed=100 + step))
        micro = [batch(step, world.rank, a) for a in range(ACCUM)]
        a, b = fixed.step(micro, 1e-2), moving.step(micro, 1e-2)
        for key in ("loss", "aux_loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-12 * max(1.0, abs(a[key])), (step, key, a[key], b[key])
    for name, value in fixed.gather_dense_parameters().items():
        torch.testing.assert_close(moving.gather_dense_parameters()[name], value, rtol=1e-11, atol=1e-13)
    moving.set_expert_placements([l["placement"] for l in fixed.expert_layers()])
    want, got = expert_state(fixed), expert_state(moving)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-13, msg=key)


def main():
    switchyard.init()
    mode, ep = sys.argv[1], int(sys.argv[2])
    world = comm.world()
    {"roundtrip": roundtrip, "disagree": disagree, "same_losses": same_losses}[mode](world, ep)
    print(f"migration ok rank={world.rank}", flush=True)


if __name__ == "__main__":
    main()
