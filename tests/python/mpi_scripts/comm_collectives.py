"""Every collective of switchyard.comm on CPU tensors, on any number of ranks (1, 2, 4...).

Each rank checks its results against values it computes itself from the known inputs of
every rank, then prints "comm ok rank=R size=S". With 4 ranks the expert_parallel = 2 x
data_parallel = 2 groups are exercised too. An assertion failure aborts the whole job
(switchyard.init()'s exception hook), so the launcher sees a non-zero exit.
Usage: [mpirun -np N] python comm_collectives.py
"""

import torch

import switchyard
import switchyard.comm as comm

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8]


def block(src, dst, rows, trailing, dtype):
    """Rows src sends to dst: small integers, exact in every dtype."""
    n = rows
    for t in trailing:
        n *= t
    v = torch.arange(n, dtype=torch.float64).reshape(rows, *trailing)
    return ((v * 3 + src * 13 + dst * 5) % 61).to(dtype)


def rows_between(src, dst):
    return (src * 3 + dst * 2 + 1) % 4  # zero for some pairs


def rank_values(rank, shape, dtype):
    n = 1
    for s in shape:
        n *= s
    return ((torch.arange(n, dtype=torch.float64).reshape(shape) * 7 + rank * 11) % 50).to(dtype)


def check_all_to_all_v(group, dtype, trailing, async_op):
    me = group.world_ranks[group.rank]
    members = group.world_ranks
    send_splits = [rows_between(me, p) for p in members]
    recv_splits = torch.tensor([rows_between(p, me) for p in members])  # a CPU tensor works too
    send = torch.cat([block(me, p, rows_between(me, p), trailing, dtype) for p in members])
    expected = torch.cat([block(p, me, rows_between(p, me), trailing, dtype) for p in members])
    got = comm.all_to_all_v(send, send_splits, recv_splits, group=group, async_op=async_op)
    if async_op:
        got.wait()
        assert got.is_completed()
        got = got.result
    assert got.dtype == dtype and torch.equal(got, expected), (group.name, dtype, got, expected)


def check_reductions(group, dtype):
    size, rank = group.size, group.rank
    members = group.world_ranks
    me = members[rank]
    ops = ["sum", "max", "min"] + (["avg"] if dtype.is_floating_point else [])
    for op in ops:
        stack = torch.stack([rank_values(p, (size * 2, 3), torch.float64) for p in members])
        ref = {"sum": stack.sum(0), "avg": stack.sum(0) / size, "max": stack.amax(0), "min": stack.amin(0)}[op]
        t = rank_values(me, (size * 2, 3), dtype)
        out = comm.reduce_scatter(t, op, group=group)
        assert torch.equal(out, ref[rank * 2 : rank * 2 + 2].to(dtype)), (group.name, "reduce_scatter", op, dtype)
        work = comm.all_reduce(t, op, group=group, async_op=True)
        work.wait()
        assert work.result is not None and torch.equal(t, ref.to(dtype)), (group.name, "all_reduce", op, dtype)
    gathered = comm.all_gather(rank_values(me, (2, 2), dtype), group=group)
    assert torch.equal(gathered, torch.cat([rank_values(p, (2, 2), dtype) for p in members]))
    root = size - 1
    b = rank_values(me, (3,), dtype) if rank == root else torch.zeros(3, dtype=dtype)
    comm.broadcast(b, root, group=group)
    assert torch.equal(b, rank_values(members[root], (3,), dtype))


def main():
    info = switchyard.init()
    world = comm.world()
    assert comm.world() is world and world.size == info.world_size and world.rank == info.rank
    group_list = [world]
    if world.size == 4:
        cfg = switchyard.load_config("configs/demo.yaml", overrides=["parallel.expert_parallel=2"])
        groups = comm.groups(cfg)
        r = world.rank
        assert groups.expert_parallel.world_ranks == [r // 2 * 2, r // 2 * 2 + 1]
        assert groups.expert_data_parallel.world_ranks == [r % 2, r % 2 + 2]
        assert groups.data_parallel.world_ranks == [0, 1, 2, 3]
        assert (groups.expert_parallel_size, groups.data_parallel_size) == (2, 2)
        group_list += [groups.expert_parallel, groups.expert_data_parallel]
    for group in group_list:
        for dtype in DTYPES:
            for trailing, async_op in (((3,), False), ((), True), ((2, 2), False)):
                check_all_to_all_v(group, dtype, trailing, async_op)
            check_reductions(group, dtype)
        comm.barrier(group=group)
        comm.barrier(group=group, async_op=True).wait()
    print(f"comm ok rank={world.rank} size={world.size}", flush=True)


if __name__ == "__main__":
    main()
