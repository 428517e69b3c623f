#!/usr/bin/env python3
"""Benchmark: switchyard.nn.MoELayer forward+backward against three PyTorch baselines.

Variants, all with the same weights (copied from one Hugging Face Mixtral block), the same
input and the same upstream gradient; softmax top-k routing with renormalised weights and
SwiGLU experts (Mixtral), no auxiliary loss:

  ours   switchyard.nn.MoELayer (aux_loss_coeff=0)
  hf     (a) transformers' MixtralSparseMoeBlock (eager experts: a Python loop over experts)
  vec    (b) the best plain-PyTorch version written here: router, topk, a stable sort of the
         slots by expert, index_select of the rows, one fused gate|up matmul and one down
         matmul per expert on contiguous row blocks, SwiGLU, index_add_ weighted combine
  gmm    (b') like vec, but the expert products are two torch._grouped_mm calls (PyTorch's
         grouped GEMM, private API) instead of a Python loop
  floor  (c) the expert matrix products alone on rows already grouped by expert (the block
         sizes of the real routing): forward X@Wg, X@Wu, A@Wd and backward dA = dY@Wd^T,
         dWd = A^T@dY, dWg = X^T@dH, dWu = X^T@dU, dX = dH@Wg^T + dU@Wu^T (addmm), one
         torch.mm per expert and product (multithreaded BLAS) into output buffers allocated
         once per step; no routing, permutation, activation or combine
  gfloor (c') the same nine products with switchyard's grouped_mm / grouped_mm_weight_grad
         operators (threads split the rows of all experts, single-threaded BLAS each): the
         products exactly as MoELayer runs them, so MoELayer / (c') is the cost of
         everything else in the layer
The "/ floor" column divides by the faster of (c) and (c') at that size: the floor is the
best way found to run the products alone.

Time: forward+backward of one step (parameter gradients set to None before each step, so
each step allocates its gradients as training does), median of --repeats runs after
--warmup runs; the variants take turns within each repeat so a slow phase of a shared
machine hits all of them. All in one process with --threads intra-op threads
(torch.set_num_threads; OMP_NUM_THREADS is set to the same before torch loads).

Allocator (CPU): glibc serves blocks over its mmap threshold (at most 32 MiB by default)
with a fresh mmap() each time, so a step that allocates whole-batch activations
(MoELayer's [T*k, ffn] buffers are 64 MiB at the first size) takes a page fault per 4 KiB
page on first touch, every step, while a loop over experts allocates blocks small enough
for the heap to recycle. switchyard.init() raises glibc's mmap and trim thresholds
(switchyard.tune_host_allocator(), Note [Page faults of large activations]). With
--allocator tuned (the default) the script calls it first, so every variant runs with
it; --allocator system keeps glibc's defaults (SWITCHYARD_HOST_ALLOCATOR=system), as a
user who never calls switchyard.init() gets.

Peak memory (CPU): each variant runs once more in its own subprocess. It sets up its
weights, input and upstream gradient, warms up on 256 tokens (one-time allocations:
thread pools, library workspaces), resets the kernel's peak-RSS mark (writing 5 to
/proc/self/clear_refs), takes the RSS as the baseline, runs one full-size step and reports
VmHWM - baseline: the extra resident memory of the step (activations, saved tensors,
gradients). glibc's mmap threshold is fixed at 128 KiB in those subprocesses
(MALLOC_MMAP_THRESHOLD_, whatever --allocator says) so freed large blocks go back to the
OS and RSS follows the live bytes instead of the allocator's cache. On CUDA: torch.cuda.max_memory_allocated() minus
the allocated bytes before the step, in the main process.

    python scripts/bench/bench_moe_layer.py                       # CPU, float32, 2 threads
    python scripts/bench/bench_moe_layer.py --markdown            # table for docs
    python scripts/bench/bench_moe_layer.py --sizes 2048x256x512x8x2 --repeats 3
    python scripts/bench/bench_moe_layer.py --allocator system    # glibc's default thresholds
    python scripts/bench/bench_moe_layer.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="8192x512x1024x8x2,8192x512x256x64x8",
                   help="comma-separated TxDxFFNxExK (default: the two sizes of issue C)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--variants", default="ours,hf,vec,gmm,floor,gfloor",
                   help="comma-separated among ours,hf,vec,gmm,floor,gfloor")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-check", action="store_true", help="skip the check that the variants agree")
    p.add_argument("--markdown", action="store_true", help="print the table in Markdown")
    p.add_argument("--allocator", default="tuned", choices=["tuned", "system"],
                   help="tuned: switchyard.tune_host_allocator() for the whole process, as switchyard.init() "
                        "does (default); system: glibc's defaults")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: VARIANT for a memory subprocess
    return p.parse_args(argv)


ARGS = _parse_args()
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
if ARGS.allocator == "system" or ARGS.worker:
    os.environ["SWITCHYARD_HOST_ALLOCATOR"] = "system"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(ARGS.threads)

from transformers.models.mixtral.modeling_mixtral import MixtralConfig, MixtralSparseMoeBlock  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
LABELS = {"ours": "MoELayer", "hf": "(a) HF Mixtral", "vec": "(b) vectorised", "gmm": "(b') grouped_mm",
          "floor": "(c) floor mm",
          "gfloor": "(c') floor gmm"}


def parse_size(text):
    T, d, f, E, k = (int(v) for v in text.lower().split("x"))
    return dict(T=T, d=d, f=f, E=E, k=k)


# ---------------------------------------------------------------------------------------
# Shared weights and data
# ---------------------------------------------------------------------------------------


def make_hf_block(size, dtype, device):
    cfg = MixtralConfig(hidden_size=size["d"], intermediate_size=size["f"], num_local_experts=size["E"],
                        num_experts_per_tok=size["k"], hidden_act="silu", router_jitter_noise=0.0)
    cfg._experts_implementation = "eager"
    block = MixtralSparseMoeBlock(cfg)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        block.gate.weight.copy_(torch.randn(block.gate.weight.shape, generator=gen) * 0.05)
        block.experts.gate_up_proj.copy_(torch.randn(block.experts.gate_up_proj.shape, generator=gen) * 0.02)
        block.experts.down_proj.copy_(torch.randn(block.experts.down_proj.shape, generator=gen) * 0.02)
    return block.to(device=device, dtype=dtype)


def make_data(size, dtype, device, tokens=None):
    gen = torch.Generator().manual_seed(99)
    T = tokens or size["T"]
    x = torch.randn(T, size["d"], generator=gen).to(device=device, dtype=dtype)
    g = torch.randn(T, size["d"], generator=gen).to(device=device, dtype=dtype)
    return x, g


def hf_weights(block):
    """(router [E,d], gate [E,d,f], up [E,d,f], down [E,f,d]) in MoELayer's [E, in, out] layout."""
    f = block.experts.down_proj.shape[2]
    gu = block.experts.gate_up_proj.detach()
    return (block.gate.weight.detach().clone(), gu[:, :f].transpose(1, 2).contiguous(),
            gu[:, f:].transpose(1, 2).contiguous(), block.experts.down_proj.detach().transpose(1, 2).contiguous())


def routing_counts(router, x, k, E):
    """Per-expert slot counts of softmax top-k routing (the floor's block sizes)."""
    with torch.no_grad():
        top = torch.topk(torch.softmax((x @ router.T).float(), dim=-1), k, dim=-1).indices
        return torch.bincount(top.reshape(-1), minlength=E).tolist()


# ---------------------------------------------------------------------------------------
# Variants: build(size, dtype, device) -> (step, forward); step(x, g) runs forward+backward
# ---------------------------------------------------------------------------------------


def _clear(params):
    for p in params:
        p.grad = None


def build_ours(size, dtype, device):
    import switchyard  # here, so the baselines run without the extension

    block = make_hf_block(size, dtype, device)
    router, gate, up, down = hf_weights(block)
    del block
    layer = switchyard.nn.MoELayer(d_model=size["d"], num_experts=size["E"], top_k=size["k"],
                                   ffn_hidden=size["f"], aux_loss_coeff=0.0).to(device=device, dtype=dtype)
    layer.load_state_dict({"router.weight": router, "experts.gate_proj": gate, "experts.up_proj": up,
                           "experts.down_proj": down})
    params = list(layer.parameters())

    def forward(x):
        return layer(x).output

    def step(x, g):
        _clear(params)
        x = x.detach().requires_grad_(True)
        layer(x).output.backward(g)
        return x.grad

    return step, forward


def build_hf(size, dtype, device):
    block = make_hf_block(size, dtype, device)
    params = list(block.parameters())

    def forward(x):
        return block(x.unsqueeze(0)).squeeze(0)

    def step(x, g):
        _clear(params)
        x = x.detach().requires_grad_(True)
        block(x.unsqueeze(0)).squeeze(0).backward(g)
        return x.grad

    return step, forward


def build_vec(size, dtype, device, grouped_mm=False):
    block = make_hf_block(size, dtype, device)
    router, gate, up, down = hf_weights(block)
    del block
    E, k = size["E"], size["k"]
    w_router = router.requires_grad_(True)
    w_gate_up = torch.cat([gate, up], dim=2).contiguous().requires_grad_(True)  # [E, d, 2f]: one matmul
    w_down = down.requires_grad_(True)  # [E, f, d]
    params = [w_router, w_gate_up, w_down]

    def forward(x):
        logits = x @ w_router.T
        probs = torch.softmax(logits.float(), dim=-1)
        top_w, top_e = torch.topk(probs, k, dim=-1)
        top_w = (top_w / top_w.sum(-1, keepdim=True)).to(x.dtype)
        flat_e = top_e.reshape(-1)
        order = torch.argsort(flat_e, stable=True)  # slots grouped by expert, tokens ascending
        tokens = order // k
        xs = x.index_select(0, tokens)  # [S, d], contiguous per expert
        ws = top_w.reshape(-1).index_select(0, order)  # [S]
        counts = torch.bincount(flat_e, minlength=E)
        if grouped_mm:
            offs = torch.cumsum(counts, 0).to(torch.int32)
            gu = torch._grouped_mm(xs, w_gate_up, offs=offs)
            g_, u_ = gu.chunk(2, dim=-1)
            ys = torch._grouped_mm(F.silu(g_) * u_, w_down, offs=offs)
        else:
            outs = []
            for e, rows in enumerate(xs.split(counts.tolist())):
                if rows.shape[0] == 0:
                    continue
                g_, u_ = (rows @ w_gate_up[e]).chunk(2, dim=-1)
                outs.append((F.silu(g_) * u_) @ w_down[e])
            ys = torch.cat(outs)
        return torch.zeros_like(x).index_add_(0, tokens, ys * ws[:, None])

    def step(x, g):
        _clear(params)
        x = x.detach().requires_grad_(True)
        forward(x).backward(g)
        return x.grad

    return step, forward


def build_gmm(size, dtype, device):
    return build_vec(size, dtype, device, grouped_mm=True)


def build_floor(size, dtype, device, grouped=False):
    block = make_hf_block(size, dtype, device)
    router, gate, up, down = hf_weights(block)
    del block
    d, f, E, k = size["d"], size["f"], size["E"], size["k"]
    x_full, _ = make_data(size, dtype, device)
    counts = routing_counts(router, x_full, k, E)
    S = sum(counts)
    gen = torch.Generator().manual_seed(7)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    # Inputs of every product, already grouped by expert (not timed): rows, activation,
    # upstream gradient, and the activation's input gradients.
    X, A, dY, dH, dU = rnd(S, d), rnd(S, f), rnd(S, d), rnd(S, f), rnd(S, f)
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    kw = dict(device=device, dtype=dtype)

    if grouped:
        import switchyard  # noqa: F401  (registers torch.ops.switchyard)

        gmm, gmm_wgrad = torch.ops.switchyard.grouped_mm, torch.ops.switchyard.grouped_mm_weight_grad
        counts_t = torch.tensor(counts, dtype=torch.int64, device=device)

        def grouped_step(_x=None, _g=None):
            gmm(X, gate, counts_t), gmm(X, up, counts_t), gmm(A, down, counts_t)
            gmm(dY, down, counts_t, trans_b=True), gmm_wgrad(A, dY, counts_t)
            gmm_wgrad(X, dH, counts_t), gmm_wgrad(X, dU, counts_t)
            return gmm(dH, gate, counts_t, trans_b=True).add_(gmm(dU, up, counts_t, trans_b=True))

        return grouped_step, None

    def step(_x=None, _g=None):
        H, U, Y = torch.empty(S, f, **kw), torch.empty(S, f, **kw), torch.empty(S, d, **kw)
        dA, dX = torch.empty(S, f, **kw), torch.empty(S, d, **kw)
        dWg, dWu, dWd = torch.empty(E, d, f, **kw), torch.empty(E, d, f, **kw), torch.empty(E, f, d, **kw)
        for e in range(E):
            a, b = bounds[e], bounds[e + 1]
            if a == b:
                dWg[e].zero_(), dWu[e].zero_(), dWd[e].zero_()
                continue
            torch.mm(X[a:b], gate[e], out=H[a:b])
            torch.mm(X[a:b], up[e], out=U[a:b])
            torch.mm(A[a:b], down[e], out=Y[a:b])
        for e in range(E):
            a, b = bounds[e], bounds[e + 1]
            if a == b:
                continue
            torch.mm(dY[a:b], down[e].T, out=dA[a:b])
            torch.mm(A[a:b].T, dY[a:b], out=dWd[e])
            torch.mm(X[a:b].T, dH[a:b], out=dWg[e])
            torch.mm(X[a:b].T, dU[a:b], out=dWu[e])
            torch.mm(dH[a:b], gate[e].T, out=dX[a:b])
            dX[a:b].addmm_(dU[a:b], up[e].T)
        return dX

    return step, None


def build_gfloor(size, dtype, device):
    return build_floor(size, dtype, device, grouped=True)


BUILDERS = {"ours": build_ours, "hf": build_hf, "vec": build_vec, "gmm": build_gmm, "floor": build_floor,
            "gfloor": build_gfloor}


# ---------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(variant, size, dtype):
    """Subprocess: peak extra RSS of one full-size step of one variant (see the doc)."""
    import gc

    step, _ = BUILDERS[variant](size, dtype, "cpu")
    small_x, small_g = make_data(size, dtype, "cpu", tokens=256)
    step(small_x, small_g)  # the floor's step ignores its arguments (its rows are set up)
    x, g = make_data(size, dtype, "cpu")
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    base = _rss_kib("VmRSS")
    result = step(x, g)
    peak = _rss_kib("VmHWM")
    del result
    print(json.dumps({"variant": variant, "peak_mib": (peak - base) / 1024, "reset": reset}))


def measure_memory_cpu(variant, size_text, dtype_name, threads):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(threads),
               SWITCHYARD_HOST_ALLOCATOR="system")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--sizes", size_text,
           "--dtype", dtype_name, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return data["peak_mib"], None if data["reset"] else "peak mark not reset"


def measure_memory_cuda(step, x, g):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(x, g)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def check_agreement(forwards, x, dtype):
    """The routed variants compute the same function: compare their outputs with 'hf'."""
    with torch.no_grad():
        outs = {name: fn(x).float() for name, fn in forwards.items() if fn is not None}
    if "hf" not in outs or len(outs) < 2:
        return
    ref = outs["hf"]
    tol = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 5e-2}[dtype] * max(1.0, float(ref.abs().max()))
    for name, y in outs.items():
        bad_rows = int(((y - ref).abs() > tol).any(dim=1).sum())
        status = "ok" if bad_rows == 0 else f"{bad_rows} rows differ (near-tie routing?)"
        print(f"  check {LABELS[name]:>16s} vs HF: max |diff| {float((y - ref).abs().max()):.2e}  {status}")


def bench_size(size_text, dtype, device, variants):
    size = parse_size(size_text)
    x, g = make_data(size, dtype, device)
    steps, forwards = {}, {}
    for v in variants:
        steps[v], forwards[v] = BUILDERS[v](size, dtype, device)
    heap = "allocator tuned" if ALLOCATOR_TUNED else "glibc default allocator"
    print(f"\nT={size['T']} d={size['d']} ffn={size['f']} E={size['E']} k={size['k']}  {dtype} {device}"
          f"  threads={torch.get_num_threads()}  {heap}  load avg {os.getloadavg()[0]:.2f}")
    if not ARGS.no_check:
        check_agreement(forwards, x, dtype)
    for _ in range(ARGS.warmup):
        for v in variants:
            steps[v](x, g)
    times = {v: [] for v in variants}
    for _ in range(ARGS.repeats):
        for v in variants:
            _sync(device)
            t0 = time.perf_counter()
            steps[v](x, g)
            _sync(device)
            times[v].append(time.perf_counter() - t0)
    memory = {}
    for v in variants:
        if ARGS.no_memory:
            memory[v] = (None, "skipped")
        elif device == "cuda":
            memory[v] = (measure_memory_cuda(steps[v], x, g), None)
    del steps, forwards
    if not ARGS.no_memory and device == "cpu":
        for v in variants:
            memory[v] = measure_memory_cpu(v, size_text, ARGS.dtype, ARGS.threads)
    return size, {v: statistics.median(ts) for v, ts in times.items()}, {v: min(ts) for v, ts in times.items()}, memory


ALLOCATOR_TUNED = False


def main():
    global ALLOCATOR_TUNED
    if ARGS.worker:
        worker(ARGS.worker, parse_size(ARGS.sizes), DTYPES[ARGS.dtype])
        return
    if ARGS.allocator == "tuned" and ARGS.device == "cpu":
        import switchyard

        ALLOCATOR_TUNED = switchyard.tune_host_allocator()
        if not ALLOCATOR_TUNED:
            print("note: switchyard.tune_host_allocator() did not apply (not glibc?): glibc defaults")
    device = ARGS.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    dtype = DTYPES[ARGS.dtype]
    variants = [v.strip() for v in ARGS.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in BUILDERS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; choose among {sorted(BUILDERS)}")
    rows = []
    for size_text in ARGS.sizes.split(","):
        size, med, best, mem = bench_size(size_text, dtype, device, variants)
        floors = [med[v] for v in ("floor", "gfloor") if v in med]
        floor = min(floors) if floors else None
        for v in variants:
            ratio = med[v] / floor if floor else None
            rows.append((size, v, med[v], best[v], ratio, mem[v][0], mem[v][1]))
    mem_title = "peak extra MiB" if device == "cpu" else "peak CUDA MiB"
    if ARGS.markdown:
        print(f"\n| T | d | ffn | E | k | variant | median ms | best ms | / floor | {mem_title} |")
        print("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    else:
        print(f"\n{'size':>26s} {'variant':>16s} {'median ms':>10s} {'best ms':>9s} {'/ floor':>8s} {mem_title:>15s}")
    for size, v, med_s, best_s, ratio, mib, note in rows:
        ratio_s = f"{ratio:.2f}x" if ratio else "-"
        mib_s = f"{mib:.0f}" if mib is not None else (note or "-")
        if ARGS.markdown:
            print(f"| {size['T']} | {size['d']} | {size['f']} | {size['E']} | {size['k']} | {LABELS[v]} | "
                  f"{med_s * 1e3:.0f} | {best_s * 1e3:.0f} | {ratio_s} | {mib_s} |")
        else:
            tag = f"T={size['T']} d={size['d']} f={size['f']} E={size['E']} k={size['k']}"
            print(f"{tag:>26s} {LABELS[v]:>16s} {med_s * 1e3:10.1f} {best_s * 1e3:9.1f} {ratio_s:>8s} {mib_s:>15s}")
    print("\nTargets (issue C): MoELayer <= 1.15x floor, faster than (a) and (b), peak memory <= (b).")


if __name__ == "__main__":
    main()
