"""Speculative capacity (docs/speculation.md) against the exact dispatcher path.

Checks, each printing "speculation ok rank=R check=NAME" when it passes:
  send_recv       Communicator.send_recv between some pairs only (a rank with nothing to
                  exchange skips the call), blocking and async.
  capacities      TokenDispatcher.dispatch with explicit capacities (zeros, exact, far too
                  large, random) vs. no capacities: expert rows, counts, combine output and
                  gradients bitwise equal.
  layer_*         two copies of one MoELayer, speculation off and on, over a schedule of
                  steps whose routing drifts, concentrates on one rank, moves to another
                  (a prediction of zero that then receives rows), gives a rank no tokens,
                  shrinks (predictions far too large) and grows: outputs and every gradient
                  bitwise equal at every step; the counters say a second round ran exactly
                  when some count exceeded its capacity; set_placement forgets the history.
  predicted_*     speculative routing at the layer: before each step ExpertParallel.prepare_routes
                  gets a prediction -- exact, nothing routed, every token sent to rank 0's
                  experts (zero for ranks that then receive), shifted to another rank's experts,
                  random -- over the same schedule: outputs and gradients bitwise equal to the
                  exact path; overflow exactly what the predicted counts imply; an exact
                  prediction needs no second round; even the first step is speculative.
  model_*         speculative routing in a whole MoETransformer (gating residual on and off;
                  the block predicts its routes before its attention): loss, logits and every
                  gradient bitwise equal to the exact path over several batches; one prediction
                  per MoE block and forward; expert choice takes no prediction.

Usage: mpirun -np R python speculation_parity.py DTYPE [cuda]
(cuda: only the capacities check, on CUDA tensors through NCCL, one GPU per rank.)
"""

import math
import sys

import torch

import switchyard
import switchyard.comm as comm
from switchyard.dispatch import ExpertPlacement, SpeculationOptions, TokenDispatcher, distribute, distribute_model
from switchyard.nn import MoELayer, MoETransformer
from switchyard.ops import route_topk

D, F, E = 16, 24, 8


def same(name, a, b, where):
    if a is None and b is None:
        return
    if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
        err = (a - b).abs().max().item() if a is not None and b is not None and a.shape == b.shape else "shape"
        raise AssertionError(f"{where}: {name} is not bitwise equal (max abs diff {err})")


def check_send_recv(world):
    R, me = world.size, world.rank
    # n[s][r] rows from s to r; many pairs (self included) exchange nothing.
    n = [[(s * 3 + r) % 4 if (s + 2 * r) % 3 != 0 else 0 for r in range(R)] for s in range(R)]
    send_splits = n[me]
    recv_splits = [n[s][me] for s in range(R)]
    send = torch.cat([torch.full((n[me][r], 3), float(100 * me + r)) for r in range(R)])
    expect = torch.cat([torch.full((n[s][me], 3), float(100 * s + me)) for s in range(R)])
    for async_op in (False, True):
        if sum(send_splits) + sum(recv_splits) == 0:
            continue  # not collective: nothing to exchange, no call
        out = world.send_recv(send, send_splits, recv_splits, async_op=async_op)
        if async_op:
            out.wait()
            out = out.result
        same("send_recv rows", out, expect, f"rank {me} send_recv async={async_op}")
    world.barrier()


def check_capacities(world, dtype, device="cpu"):
    R, me = world.size, world.rank
    placement = ExpertPlacement.contiguous(E, R)
    disp = TokenDispatcher(world, placement)
    g = torch.Generator().manual_seed(99)
    local = placement.local_experts(me)
    w_up = torch.randn(E, D, D, generator=g, dtype=dtype)[local].to(device)
    for trial in range(6):
        counts = [int(torch.randint(0, 9, (1,), generator=g)) for _ in range(R)]
        if trial == 2:
            counts[R - 1] = 0
        xs = [torch.randn(n, D, generator=g, dtype=dtype).to(device) for n in counts]
        ls = [torch.randn(n, E, generator=g, dtype=dtype).to(device) for n in counts]
        gys = [torch.randn(n, D, generator=g, dtype=dtype).to(device) for n in counts]
        # capacity matrix cap[s][r], the same on every rank
        if trial == 0:
            cap = [[0] * R for _ in range(R)]                       # all overflow
        elif trial == 1:
            cap = [[100] * R for _ in range(R)]                     # far too large
        else:
            cap = torch.randint(0, 6, (R, R), generator=g).tolist()  # mixed
        caps = ([cap[me][r] for r in range(R)], [cap[s][me] for s in range(R)])
        results = []
        for c in (None, caps):
            x = xs[me].clone().requires_grad_()
            logits = ls[me].clone().requires_grad_()
            routing = route_topk(logits, 2)
            handle, rows, lc = disp.dispatch(x, routing, c)
            # a local "expert": one matmul per local expert block
            outs, at = [], 0
            for i, n in enumerate(lc.tolist()):
                outs.append(rows[at:at + n] @ w_up[i])
                at += n
            y = disp.combine(handle, torch.cat(outs) if outs else rows)
            (y * gys[me]).sum().backward()
            results.append((rows, lc, y, x.grad, logits.grad, handle.stats))
        where = f"rank {me} capacities trial {trial} {dtype}"
        for k, name in enumerate(("expert rows", "local counts", "output", "x grad", "logits grad")):
            same(name, results[0][k], results[1][k], where)
        st = results[1][5]
        over_sent = sum(max(0, a - b) for a, b in zip(handle.send_splits, caps[0]))
        over_recv = sum(max(0, a - b) for a, b in zip(handle.recv_splits, caps[1]))
        assert st["speculative"] == 1 and st["collectives"] == 1, (where, st)
        assert st["overflow_rows_sent"] == over_sent and st["overflow_rows_received"] == over_recv, (where, st)
        assert st["second_round"] == int(over_sent + over_recv > 0), (where, st)
        assert results[0][5]["collectives"] == 4 and results[0][5]["speculative"] == 0
        if trial == 1:
            assert st["second_round"] == 0 and st["padding_bytes"] > 0, (where, st)


def layer_pair(dtype, router):
    """Two copies of one MoELayer (to distribute with speculation off and on) whose router
    computes logits = x[:, :E], so that the schedule's inputs steer the routing."""
    opts = dict(d_model=D, ffn_hidden=F, num_experts=E, top_k=2)
    if router == "expert_choice":
        opts.update(router="expert_choice", capacity_factor=1.0)
    torch.manual_seed(5)
    off = MoELayer(**opts).to(dtype)
    with torch.no_grad():
        w = torch.zeros_like(off.router.weight)
        w[:, :E] = torch.eye(E, dtype=dtype)
        off.router.weight.copy_(w)
    on = MoELayer(**opts).to(dtype)
    on.load_state_dict(off.state_dict())
    return off, on


def step_both(off, on, x_in, gy, where):
    """One forward + backward of the two layers on x_in; outputs and every gradient equal."""
    res = []
    for layer in (off, on):
        layer.zero_grad()
        x = x_in.clone().requires_grad_()
        out = layer(x)
        (out.output * gy).sum().backward()
        res.append((out.output, x.grad, {n: p.grad for n, p in layer.named_parameters()}))
    same("output", res[0][0], res[1][0], where)
    same("input grad", res[0][1], res[1][1], where)
    for n in res[0][2]:
        same(n + ".grad", res[0][2][n], res[1][2][n], where)


def placements(R):
    yield "contiguous", ExpertPlacement.contiguous(E, R)
    g = torch.Generator().manual_seed(4321)
    while True:
        m = torch.randint(0, R, (E,), generator=g).tolist()
        if len(set(m)) == R and m != sorted(m):
            break
    yield "random", ExpertPlacement(m, R)


def schedule(R, placement, g, dtype):
    """Per step: every rank's x (the same on every rank), following a routing pattern."""
    base = [6 + 2 * r for r in range(R)]
    prev = None
    ranks = list(range(R))
    kinds = ["random", "drift", "concentrate", "move", "zero_tokens", "few", "many", "drift"]
    for step, kind in enumerate(kinds):
        if kind == "drift" and prev is not None:
            xs = [x + 0.02 * torch.randn(x.shape, generator=g, dtype=dtype) for x in prev]
        else:
            counts = list(base)
            if kind == "zero_tokens":
                counts[R // 2] = 0
            elif kind == "few":
                counts = [1] * R
            elif kind == "many":
                counts = [3 * n + 5 for n in base]
            xs = [torch.randn(n, D, generator=g, dtype=dtype) for n in counts]
            if kind in ("concentrate", "move"):
                target = ranks[1 % R] if kind == "concentrate" else ranks[0]
                for x in xs:
                    for e in placement.local_experts(target):
                        x[:, e] += 6.0
        prev = xs
        yield step, kind, xs


def expected_capacity(rows, margin):
    return rows + math.ceil(margin * rows)


def check_layer(world, dtype, router, pname, placement, margin):
    R, me = world.size, world.rank
    off, on = layer_pair(dtype, router)
    ep_off = distribute(off, world, placement, SpeculationOptions(capacity=False))
    ep_on = distribute(on, world, placement, SpeculationOptions(capacity=True, capacity_margin=margin))
    assert ep_on.speculation.capacity and not ep_off.speculation.capacity
    g = torch.Generator().manual_seed(17)
    prev_splits = None
    second_rounds = 0

    def both(xs, where):
        gy = torch.randn(xs[me].shape, generator=torch.Generator().manual_seed(len(where)), dtype=dtype)
        step_both(off, on, xs[me], gy, where)

    for step, kind, xs in schedule(R, placement, g, dtype):
        where = f"rank {me} {router} {pname} margin {margin} step {step} ({kind}) {dtype}"
        both(xs, where)
        st = ep_on.last_stats
        assert ep_off.last_stats["speculative"] == 0 and ep_off.last_stats["collectives"] == 4, where
        if prev_splits is None:
            assert st["speculative"] == 0, (where, st)  # no history: the exact path
        else:
            send, recv = ep_on.last_splits
            cap_s = [expected_capacity(n, margin) for n in prev_splits[0]]
            cap_r = [expected_capacity(n, margin) for n in prev_splits[1]]
            over_s = sum(max(0, a - c) for a, c in zip(send, cap_s))
            over_r = sum(max(0, a - c) for a, c in zip(recv, cap_r))
            assert st["speculative"] == 1 and st["collectives"] == 1 and st["host_syncs_before_payload"] == 0, (where, st)
            assert st["overflow_rows_sent"] == over_s and st["overflow_rows_received"] == over_r, (where, st, cap_s, send)
            assert st["second_round"] == int(over_s + over_r > 0), (where, st)
            second_rounds += st["second_round"]
        prev_splits = ep_on.last_splits
        assert ep_on.last_splits == ep_off.last_splits, where

    # Counters: overflow sent by all = overflow received by all; the schedule forces second rounds.
    c = ep_on.counters
    tot = torch.tensor([c["overflow_rows_sent"], c["overflow_rows_received"], second_rounds], dtype=torch.int64)
    world.all_reduce(tot)
    assert tot[0] == tot[1] and tot[2] > 0, (tot, c)
    assert c["dispatches"] == 8 and c["speculative_dispatches"] == 7 and c["host_syncs_before_payload"] == 1, c
    assert ep_off.counters["collectives"] == 8 * 5 and c["collectives"] == 5 + 7 * 2, (ep_off.counters, c)

    # A new placement (same experts per rank, so the local weights still fit) forgets the history.
    perm = list(range(1, E)) + [0]
    moved = ExpertPlacement([placement.rank_of_expert[perm[e]] for e in range(E)], R)
    ep_off.set_placement(moved)
    ep_on.set_placement(moved)
    xs = [torch.randn(7, D, generator=g, dtype=dtype) for _ in range(R)]
    both(xs, f"rank {me} {router} {pname} after set_placement")
    assert ep_on.last_stats["speculative"] == 0, ep_on.last_stats
    both(xs, f"rank {me} {router} {pname} after set_placement, second step")
    assert ep_on.last_stats["speculative"] == 1 and ep_on.last_stats["second_round"] == 0, ep_on.last_stats


def predicted_rows(ids_TK, placement):
    """Rows a prediction sends each rank: tokens with a predicted expert (< E) held there."""
    R = placement.num_ranks
    out = [0] * R
    for row in ids_TK.tolist():
        for r in {placement.rank_of_expert[e] for e in row if e < E}:
            out[r] += 1
    return out


def calibrated(now, before, actual):
    """ExpertParallel's calibration (Note [Predicted capacities]): the prediction scaled by the
    previous step's true / predicted rows (shifted when it predicted none), never lowered."""
    if before is None:
        return now
    return [max(n, n + a if b == 0 else math.floor(n * a / b + 0.5)) for n, b, a in zip(now, before, actual)]


def prediction(kind, x, placement, g):
    """A prediction of x's top-2 experts (logits = x[:, :E], see check_predicted)."""
    T, R = x.shape[0], placement.num_ranks
    exact = route_topk(x[:, :E].detach(), 2).topk_experts
    if kind == "exact":
        return exact
    if kind == "unrouted":
        return torch.full((T, 2), E, dtype=torch.int64)
    if kind == "to_rank0":  # ranks other than 0 predicted to receive nothing
        local0 = placement.local_experts(0)
        return torch.tensor([[local0[0], local0[-1]]] * T, dtype=torch.int64).view(T, 2)
    if kind == "shifted":  # every expert's place taken by one on the next rank
        nxt = [placement.local_experts((placement.rank_of_expert[e] + 1) % R)[0] for e in range(E)]
        return torch.tensor(nxt, dtype=torch.int64)[exact]
    return torch.randint(0, E, (T, 2), generator=g)


def check_predicted(world, dtype, pname, placement):
    R, me = world.size, world.rank
    off, on = layer_pair(dtype, "topk")
    ep_off = distribute(off, world, placement, SpeculationOptions(capacity=False))
    ep_on = distribute(on, world, placement, SpeculationOptions(capacity=True, capacity_margin=0.0, routes=True))
    assert ep_on.wants_route_prediction and not ep_off.wants_route_prediction
    kinds = ["exact", "unrouted", "to_rank0", "shifted", "random", "exact", "random", "exact"]
    before = actual = None  # the previous step's predicted and true rows per peer (calibration)
    g = torch.Generator().manual_seed(23)
    gp = torch.Generator().manual_seed(100 + me)  # random predictions differ per rank
    for (step, kind, xs), pkind in zip(schedule(R, placement, g, dtype), kinds):
        where = f"rank {me} predicted {pname} step {step} ({kind}, prediction {pkind}) {dtype}"
        pred = prediction(pkind, xs[me], placement, gp)
        ep_on.prepare_routes(pred)
        gy = torch.randn(xs[me].shape, generator=torch.Generator().manual_seed(step), dtype=dtype)
        step_both(off, on, xs[me], gy, where)
        st = ep_on.last_stats
        send, recv = ep_on.last_splits
        now = predicted_rows(pred, placement)
        cap = calibrated(now, before, actual)  # margin 0
        before, actual = now, list(send)
        over = sum(max(0, a - c) for a, c in zip(send, cap))
        assert st["speculative"] == 1 and st["collectives"] == 1 and st["host_syncs_before_payload"] == 0, (where, st)
        assert st["overflow_rows_sent"] == over, (where, st, cap, send)
        if pkind == "exact":  # on every rank: nobody sends or receives a second round
            assert st["second_round"] == 0, (where, st)
    c = ep_on.counters
    tot = torch.tensor([c["overflow_rows_sent"], c["overflow_rows_received"], c["second_rounds"]], dtype=torch.int64)
    world.all_reduce(tot)
    assert tot[0] == tot[1] and tot[2] > 0, (tot, c)
    assert c["dispatches"] == 8 and c["route_predicted_dispatches"] == 8 and c["speculative_dispatches"] == 8, c
    assert c["prediction_collectives"] == 8 and c["prediction_host_syncs"] == 8, c
    assert c["host_syncs_before_payload"] == 0 and c["collectives"] == 8 * 2, c
    # A prepared prediction does not survive a new placement: the next forward is exact.
    ep_off.set_placement(placement)
    ep_on.prepare_routes(prediction("exact", xs[me], placement, gp))
    ep_on.set_placement(placement)
    x = xs[me].clone()
    same("output after set_placement", off(x).output, on(x).output, f"rank {me} predicted {pname} set_placement")
    assert ep_on.last_stats["speculative"] == 0, ep_on.last_stats


MODEL = dict(vocab_size=53, d_model=16, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=24, max_seq_len=16,
             moe_layer_freq=1, first_k_dense=1, tie_embeddings=True, init_std=0.1)


def check_model(world, dtype, variant):
    R, me = world.size, world.rank
    moe = dict(num_experts=E, top_k=2, ffn_hidden=12, aux_loss_coeff=0.05)
    if variant == "gating_residual":
        moe.update(gating_residual=True, num_shared_experts=1)
    elif variant == "expert_choice":
        moe.update(router="expert_choice", capacity_factor=1.0)
    models, eps = [], []
    for spec in (SpeculationOptions(capacity=False), SpeculationOptions(capacity=True, routes=True)):
        torch.manual_seed(0)
        m = MoETransformer(**MODEL, moe=moe).to(dtype)
        eps.append(distribute_model(m, world, speculation=spec))
        models.append(m)
    g = torch.Generator().manual_seed(31 + me)
    for step in range(4):
        S = 3 + (step * 5 + me) % 9
        ids = torch.randint(0, 53, (2, S), generator=g)
        targets = torch.randint(0, 53, (2, S), generator=g)
        outs = []
        for m in models:
            m.zero_grad()
            out = m(ids, targets, return_logits=True)
            (out.loss + out.aux_loss).backward()
            outs.append((out.loss, out.logits, {n: p.grad for n, p in m.named_parameters()}))
        where = f"rank {me} model {variant} step {step} {dtype}"
        same("loss", outs[0][0], outs[1][0], where)
        same("logits", outs[0][1], outs[1][1], where)
        for n, grad in outs[0][2].items():
            same(n + ".grad", grad, outs[1][2][n], where)
    for ep in eps[1]:
        c = ep.counters
        want = 0 if variant == "expert_choice" else 4
        assert c["dispatches"] == 4 and c["route_predicted_dispatches"] == want, (variant, c)
        assert c["prediction_collectives"] == want and c["prediction_host_syncs"] == want, (variant, c)
        if want:
            assert c["speculative_dispatches"] == 4 and c["host_syncs_before_payload"] == 0, (variant, c)


def main(dtype_name, device="cpu"):
    info = switchyard.init()
    world = comm.world()
    dtype = {"float64": torch.float64, "float32": torch.float32}[dtype_name]
    if device == "cuda":  # NCCL: the capacity path on the device (one GPU per rank)
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        check_capacities(world, dtype, torch.device("cuda", torch.cuda.current_device()))
        print(f"speculation ok rank={info.rank} check=capacities_cuda", flush=True)
        return
    check_send_recv(world)
    print(f"speculation ok rank={info.rank} check=send_recv", flush=True)
    check_capacities(world, dtype)
    print(f"speculation ok rank={info.rank} check=capacities", flush=True)
    for router in ("topk", "expert_choice"):
        for (pname, placement), margin in zip(placements(world.size), (0.1, 0.0)):
            check_layer(world, dtype, router, pname, placement, margin)
            print(f"speculation ok rank={info.rank} check=layer_{router}_{pname}", flush=True)
    for pname, placement in placements(world.size):
        check_predicted(world, dtype, pname, placement)
        print(f"speculation ok rank={info.rank} check=predicted_{pname}", flush=True)
    for variant in ("topk", "gating_residual", "expert_choice"):
        check_model(world, dtype, variant)
        print(f"speculation ok rank={info.rank} check=model_{variant}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
