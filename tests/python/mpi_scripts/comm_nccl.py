"""The NCCL backend on CUDA tensors, on any number of ranks with one GPU each (a single
GPU hosts one rank). Checks every collective and dtype against locally computed values,
the non-blocking forms with work queued on the compute stream before and after, and that
a pinned backend rejects the other device's tensors. Prints "nccl ok rank=R".
Usage: [mpirun -np N] python comm_nccl.py
"""

import torch

import switchyard
import switchyard.comm as comm

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8]


def rank_values(rank, shape, dtype, device):
    n = 1
    for s in shape:
        n *= s
    v = torch.arange(n, dtype=torch.float64, device=device).reshape(shape)
    return ((v * 7 + rank * 11) % 50).to(dtype)


def main():
    info = switchyard.init()
    dev = switchyard.device()
    assert dev.type == "cuda", dev
    w = comm.world()
    size, rank = w.size, w.rank
    for dtype in DTYPES:
        # all_to_all_v: rank r sends (r + p) % 3 rows to p.
        send_splits = [(rank + p) % 3 for p in range(size)]
        recv_splits = [(p + rank) % 3 for p in range(size)]
        send = torch.cat([rank_values(rank * 10 + p, (send_splits[p], 4), dtype, dev) for p in range(size)])
        expected = torch.cat([rank_values(p * 10 + rank, (recv_splits[p], 4), dtype, dev) for p in range(size)])
        assert torch.equal(comm.all_to_all_v(send, send_splits, recv_splits), expected), dtype
        stack = torch.stack([rank_values(p, (size * 2, 3), torch.float64, dev) for p in range(size)])
        for op in ["sum", "max", "min"] + (["avg"] if dtype.is_floating_point else []):
            ref = {"sum": stack.sum(0), "avg": stack.sum(0) / size, "max": stack.amax(0), "min": stack.amin(0)}[op]
            t = rank_values(rank, (size * 2, 3), dtype, dev)
            rs = comm.reduce_scatter(t, op)
            assert torch.equal(rs, ref[rank * 2 : rank * 2 + 2].to(dtype)), (op, dtype)
            comm.all_reduce(t, op)
            assert torch.equal(t, ref.to(dtype)), (op, dtype)
        g = comm.all_gather(rank_values(rank, (2, 2), dtype, dev))
        assert torch.equal(g, torch.cat([rank_values(p, (2, 2), dtype, dev) for p in range(size)]))
        b = rank_values(rank, (5,), dtype, dev)
        comm.broadcast(b, size - 1)
        assert torch.equal(b, rank_values(size - 1, (5,), dtype, dev))

    # Overlap: a long kernel produces the input on the compute stream; the collective must
    # see its result (the comm stream waits for it), and wait() orders later kernels.
    x = torch.randn(2048, 2048, device=dev)
    for _ in range(4):
        x = x @ x / 2048
    src = x[:8].clone()
    to_self = [8 if p == rank else 0 for p in range(size)]  # zero rows to every other peer
    work = comm.all_to_all_v(src, to_self, to_self, async_op=True)
    del src  # the handle and record_stream keep its memory from being reused too early
    work.wait()
    assert torch.equal(work.result, x[:8])
    t = torch.ones(1 << 20, device=dev)
    work = comm.all_reduce(t, async_op=True)
    work.wait()
    assert torch.equal(t, torch.full_like(t, size))
    torch.cuda.synchronize()
    assert work.is_completed()

    w.backend = "mpi"
    try:
        comm.all_reduce(torch.ones(2, device=dev))
    except ValueError as e:
        assert "pinned to mpi" in str(e)
    else:
        raise AssertionError("a CUDA tensor on a group pinned to mpi was accepted")
    w.backend = "auto"
    cpu = torch.ones(3)
    comm.all_reduce(cpu)  # CPU tensors on the same group go through MPI
    assert torch.equal(cpu, torch.full((3,), float(size)))
    print(f"nccl ok rank={rank}", flush=True)


if __name__ == "__main__":
    main()
