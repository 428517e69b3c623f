"""The main job until the MoE transformer and its training loop exist (issue F).

Runs under ``mpirun -np 2`` (``scripts/demo``) or as one process. Every rank:

1. starts the runtime and loads the YAML config (``configs/demo.yaml`` by default);
2. makes its own batch of token hidden states -- a mixture of clusters with Zipf-skewed
   frequencies, so an untrained router overloads a few experts, as real ones do early on;
3. trains a router (the config's ``moe`` section: experts, top-k, score function) against
   the Switch auxiliary loss plus the router z-loss, routing with the fused C++
   ``route_topk`` operator, and reports the max/mean expert load as it falls;
4. starts a second, equally skewed router and balances it without any loss, with the
   DeepSeek-V3 auxiliary-loss-free bias update.

Ranks do not exchange data yet (the communicator is issue D); each balances its own tokens.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import switchyard
from switchyard import ops


def make_tokens(num_tokens: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """Token hidden states drawn from 32 clusters with Zipf(1.1)-distributed frequencies."""
    centres = torch.randn(32, d, generator=generator)
    freq = 1.0 / torch.arange(1, 33, dtype=torch.float64) ** 1.1
    which = torch.multinomial(freq / freq.sum(), num_tokens, replacement=True, generator=generator)
    return centres[which] + 0.3 * torch.randn(num_tokens, d, generator=generator)


def skewed_router(num_experts: int, d: int, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A router whose first two experts are aligned with the mean token: badly imbalanced."""
    weight = 0.02 * torch.randn(num_experts, d, generator=generator)
    direction = tokens.mean(0) / tokens.mean(0).norm()
    weight[:2] += 0.5 * direction
    return weight


def load_imbalance(expert_load: torch.Tensor) -> float:
    load = expert_load.to(torch.float64)
    return float(load.max() / load.mean().clamp_min(1e-9))


def summary(history: list[float]) -> tuple[float, float]:
    """(imbalance at the start, mean imbalance over the last 20 steps)."""
    tail = history[-20:]
    return history[0], sum(tail) / len(tail)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per rank")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    info = switchyard.init()
    cfg = switchyard.load_config(args.config, overrides=args.set)
    moe, d = cfg.moe, cfg.model.d_model
    say = print if info.rank == 0 else (lambda *a, **k: None)
    say(f"switchyard demo on {info.world_size} rank(s): routing + balancing (the MoE transformer "
        f"training job arrives with issue F)")
    say(f"config {args.config}: {moe.num_experts} experts, top-{moe.top_k}, {moe.score_func} scores, "
        f"d_model {d}, {args.tokens} tokens per rank")

    gen = torch.Generator().manual_seed(cfg.train.seed + 1000 * info.rank)
    x = make_tokens(args.tokens, d, gen)
    route = dict(k=moe.top_k, score_func=moe.score_func, renormalize=moe.renormalize)

    # --- 3. a router trained against the balancing losses -------------------------------
    weight = skewed_router(moe.num_experts, d, x, gen).requires_grad_()
    opt = torch.optim.Adam([weight], lr=1e-2)
    # The config's coefficients when it sets them, else the usual defaults (ST-MoE, Switch).
    aux_coeff = moe.aux_loss_coeff if moe.aux_loss_coeff > 0 else 1e-2
    z_coeff = moe.z_loss_coeff if moe.z_loss_coeff > 0 else 1e-3
    start = time.perf_counter()
    say(f"\n[1/2] router trained on aux loss (coeff {aux_coeff}) + z-loss (coeff {z_coeff})")
    say(f"{'step':>6} {'aux loss':>10} {'z-loss':>10} {'max/mean load':>14}")
    history = []
    for step in range(args.steps + 1):
        logits = ops.router_logits(x, weight)
        routing = ops.route_topk(logits, **route)
        aux = ops.switch_aux_loss(logits, routing.topk_experts, score_func=moe.score_func)
        z = ops.z_loss(logits)
        imbalance = load_imbalance(routing.expert_load)
        history.append(imbalance)
        if step % max(1, args.steps // 6) == 0:
            say(f"{step:>6} {aux.item():>10.4f} {z.item():>10.4f} {imbalance:>14.2f}")
        opt.zero_grad()
        (aux_coeff * aux + z_coeff * z).backward()
        opt.step()
    trained = summary(history)

    # --- 4. auxiliary-loss-free balancing with the selection bias -----------------------
    weight = skewed_router(moe.num_experts, d, x, gen)
    bias = torch.zeros(moe.num_experts)
    rate = moe.bias_update_rate if moe.bias_update_rate > 0 else 1e-2
    say(f"\n[2/2] no loss: selection bias updated by {rate} * sign(mean load - load) each step")
    say(f"{'step':>6} {'max/mean load':>14}")
    history = []
    logits = ops.router_logits(x, weight)
    for step in range(args.steps + 1):
        routing = ops.route_topk(logits, selection_bias=bias, **route)
        imbalance = load_imbalance(routing.expert_load)
        history.append(imbalance)
        if step % max(1, args.steps // 6) == 0:
            say(f"{step:>6} {imbalance:>14.2f}")
        ops.update_expert_bias_(bias, routing.expert_load, rate)

    biased = summary(history)
    print(f"rank {info.rank}: max/mean expert load {trained[0]:.2f} -> {trained[1]:.2f} with the aux loss, "
          f"{biased[0]:.2f} -> {biased[1]:.2f} with the bias update (start -> mean of the last 20 steps) ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
