"""Distributed equals local: an expert-parallel MoELayer on R ranks against the
single-process layer. Every rank builds the full layer with the same seed and computes the
reference for every rank's slice of the global batch (routing is per rank's batch, so
capacity limits apply per slice, as under expert parallelism); then the distributed layer
runs on its own slice. Outputs, input gradients and every parameter's gradient are compared
(dense parameters: summed over ranks; experts: the rows this rank holds). Also checks token
conservation and the deduplication saving.

Usage: mpirun -np R python dispatch_parity.py DTYPE [CASE ...]
Prints "dispatch ok rank=R case=C placement=P" per passing combination.
"""

import sys

import torch

import switchyard
import switchyard.comm as comm
from switchyard.dispatch import ExpertPlacement, distribute
from switchyard.nn import MoELayer

D, F = 16, 24
CASES = {
    "basic": dict(num_experts=8, top_k=2),
    "top3_shared_zero_null": dict(num_experts=6, top_k=3, num_shared_experts=1, shared_expert_gate=True,
                                  num_null_experts=2, num_zero_experts=1, num_copy_experts=1,
                                  num_constant_experts=1),
    "capacity": dict(num_experts=8, top_k=2, capacity_factor=0.6),
    "capacity_score": dict(num_experts=8, top_k=2, capacity_factor=0.8, drop_policy="score"),
    "sigmoid_groups": dict(num_experts=8, top_k=3, score_func="sigmoid", num_groups=4, topk_groups=2,
                           scaling_factor=2.0),
    "gelu_top4_bias": dict(num_experts=12, top_k=4, activation="gelu", selection_bias=True),
    # Each rank's experts choose among the rank's own tokens, then travel in top-k form.
    "expert_choice": dict(num_experts=8, top_k=2, router="expert_choice", capacity_factor=1.0,
                          num_shared_experts=1),
}


def placements(E, R):
    yield "contiguous", ExpertPlacement.contiguous(E, R)
    # Uneven: rank 0 holds one expert, the middle ranks one each, the last rank the rest.
    uneven = list(range(R - 1)) + [R - 1] * (E - (R - 1))
    yield "uneven", ExpertPlacement(uneven, R)
    g = torch.Generator().manual_seed(1234)
    while True:
        m = torch.randint(0, R, (E,), generator=g).tolist()
        if len(set(m)) == R:
            break
    yield "random", ExpertPlacement(m, R)


def tokens_per_rank(R, case_index):
    counts = [5 + 3 * r for r in range(R)]
    if case_index % 2 == 1:
        counts[R // 2] = 0  # a rank that routes no tokens at all
    return counts


def close(name, a, b, dtype, where):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    if a is None or b is None or a.shape != b.shape or not torch.allclose(a, b, **tol):
        err = (a - b).abs().max().item() if a is not None and b is not None and a.shape == b.shape else "shape"
        raise AssertionError(f"{where}: {name} differs (max abs err {err})")


def run_case(world, dtype, case, case_index, pname, placement):
    R, rank = world.size, world.rank
    opts = dict(d_model=D, ffn_hidden=F, **CASES[case])
    torch.manual_seed(100 + case_index)
    ref = MoELayer(**opts).to(dtype)
    if opts.get("selection_bias"):
        with torch.no_grad():
            ref.router.selection_bias.copy_(torch.randn(ref.router.selection_bias.shape, dtype=dtype) * 0.1)
    layer = MoELayer(**opts).to(dtype)
    layer.load_state_dict(ref.state_dict())
    counts = tokens_per_rank(R, case_index)
    g = torch.Generator().manual_seed(7 + case_index)
    xs = [torch.randn(n, D, generator=g, dtype=dtype) for n in counts]
    gs = [torch.randn(n, D, generator=g, dtype=dtype) for n in counts]

    # Reference: every slice through the full layer; one backward for all.
    ref_x = [x.clone().requires_grad_() for x in xs]
    ref_y, loss, kept = [], 0.0, 0
    for x, gy in zip(ref_x, gs):
        out = ref(x)
        ref_y.append(out.output)
        loss = loss + (out.output * gy).sum()
        kept += int(out.expert_counts.sum())
    loss.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}

    ep = distribute(layer, world, placement)
    local = layer.cpp_module.local_expert_ids()
    assert local == placement.local_experts(rank), (local, placement.local_experts(rank))
    x = xs[rank].clone().requires_grad_()
    out = layer(x)
    (out.output * gs[rank]).sum().backward()

    where = f"rank {rank} case {case} placement {pname} {dtype}"
    close("output", out.output, ref_y[rank].detach(), dtype, where)
    close("input grad", x.grad, ref_x[rank].grad, dtype, where)
    for name, p in layer.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        expect = ref_grads[name]
        expect = torch.zeros_like(ref.state_dict()[name]) if expect is None else expect
        if name.startswith("experts."):
            close(name + ".grad", grad, expect[local], dtype, where)
        else:
            total = grad.clone().contiguous()
            world.all_reduce(total)
            close(name + ".grad (summed over ranks)", total, expect, dtype, where)

    # Token conservation: every kept slot dispatched once and received once.
    st = ep.last_stats
    assert st["slots_sent"] == int(out.expert_counts.sum()), (st, out.expert_counts)
    mine = torch.tensor([st["rows_sent"], st["rows_received"], st["slots_sent"], st["slots_received"],
                         st["remote_rows_sent"], st["remote_slots_sent"]], dtype=torch.int64)
    world.all_reduce(mine)
    rows_s, rows_r, slots_s, slots_r, rrows, rslots = mine.tolist()
    assert rows_s == rows_r and slots_s == slots_r == kept, (mine, kept)
    assert rrows <= rslots
    return rrows, rslots


def main(dtype_name, cases):
    info = switchyard.init()
    world = comm.world()
    dtype = {"float64": torch.float64, "float32": torch.float32}[dtype_name]
    names = list(CASES) if not cases else cases
    for i, case in enumerate(names):
        E = CASES[case]["num_experts"]
        for pname, placement in placements(E, world.size):
            rrows, rslots = run_case(world, dtype, case, list(CASES).index(case), pname, placement)
            # Deduplication: with several of a token's experts on one remote rank, fewer rows travel.
            if case == "sigmoid_groups" and pname == "contiguous":
                assert rrows < rslots, (rrows, rslots)
            print(f"dispatch ok rank={info.rank} case={case} placement={pname} "
                  f"remote_rows={rrows} remote_slots={rslots}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
