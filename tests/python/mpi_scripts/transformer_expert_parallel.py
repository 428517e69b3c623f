"""Distributed equals local for the whole language model: distribute_model makes every MoE
block expert-parallel; each rank runs its own micro-batch. Against the single-process
model (same seed, same weights) on every rank's micro-batch: each rank's loss and aux
loss, dense gradients summed over ranks, and the expert rows each rank holds.

Usage: mpirun -np R python transformer_expert_parallel.py
Prints "transformer ep ok rank=R" when every check passes.
"""

import torch

import switchyard
import switchyard.comm as comm
from switchyard.dispatch import distribute_model
from switchyard.nn import MoETransformer

VOCAB = 53
OPTIONS = dict(vocab_size=VOCAB, d_model=16, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=24, max_seq_len=16,
               moe_layer_freq=1, first_k_dense=1, tie_embeddings=True, init_std=0.1,
               moe=dict(num_experts=4, top_k=2, ffn_hidden=12, gating_residual=True, num_shared_experts=1,
                        aux_loss_coeff=0.05))


def close(name, a, b, where):
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
        err = (a - b).abs().max().item() if a.shape == b.shape else "shape"
        raise AssertionError(f"{where}: {name} differs (max abs err {err})")


def main():
    info = switchyard.init()
    world = comm.world()
    R, rank = world.size, world.rank
    torch.manual_seed(0)
    ref = MoETransformer(**OPTIONS).double()
    torch.manual_seed(0)
    model = MoETransformer(**OPTIONS).double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, VOCAB, (2, 5 + r), generator=g), torch.randint(0, VOCAB, (2, 5 + r), generator=g))
               for r in range(R)]

    ref_losses = []
    for ids, targets in batches:
        out = ref(ids, targets)
        (out.loss + out.aux_loss).backward()
        ref_losses.append((out.loss.detach(), out.aux_loss.detach()))
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}

    eps = distribute_model(model, world)
    assert len(eps) == 2
    ids, targets = batches[rank]
    out = model(ids, targets)
    (out.loss + out.aux_loss).backward()
    where = f"rank {rank}"
    close("loss", out.loss, ref_losses[rank][0], where)
    close("aux_loss", out.aux_loss, ref_losses[rank][1], where)
    local = model.moe_layers()[0].cpp_module.local_expert_ids()
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if ".mlp.experts." in name:
            assert p.shape[0] == len(local), (name, p.shape)
            close(name + ".grad", grad, ref_grads[name][local], where)
        else:
            total = grad.clone().contiguous()
            world.all_reduce(total)
            close(name + ".grad (summed over ranks)", total, ref_grads[name], where)
    print(f"transformer ep ok rank={info.rank}", flush=True)


if __name__ == "__main__":
    main()
