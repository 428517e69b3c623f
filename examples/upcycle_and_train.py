"""Upcycling with switchyard's Python API: train a dense model briefly, turn it into an MoE
whose logits at initialisation are the dense model's, and keep training the MoE.

    mpirun -np 2 python examples/upcycle_and_train.py            # configs/upcycle_{dense,moe}.yaml
    mpirun -np 2 python examples/upcycle_and_train.py --dense-steps 20 --moe-steps 20 --set train.eval_every=10

Every rank runs this file. Each stage is the library's own: switchyard.training.Trainer (the
loop of python -m switchyard.train, with checkpoints), switchyard.upcycle (C++: sparse
upcycling -- 8 copies of the dense FFN, top-1, a small random router -- written as a step-0
checkpoint), and the Trainer again, resuming from that
checkpoint on the same ranks (its experts spread over them). docs/upcycling.md has the
methods and the comparison with continued dense training.
"""

import argparse
from pathlib import Path

import torch

import switchyard
from switchyard import checkpoint, upcycle
from switchyard.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dense", default="configs/upcycle_dense.yaml")
    parser.add_argument("--moe", default="configs/upcycle_moe.yaml")
    parser.add_argument("--dense-steps", type=int, default=100)
    parser.add_argument("--moe-steps", type=int, default=100)
    parser.add_argument("--out", default="runs/upcycle_example")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a key of both configs (repeatable)")
    args = parser.parse_args()
    info = switchyard.init()
    out = Path(args.out)

    # 1. A dense model, trained briefly; its final checkpoint is the source.
    dense_cfg = switchyard.load_config(args.dense, args.set + [f"train.steps={args.dense_steps}",
                                                                f"train.run_dir={out / 'dense'}"])
    Trainer(dense_cfg, config_path=args.dense).run()
    source = checkpoint.latest(out / "dense" / "checkpoints")

    # 2. Upcycled: every rank computes it, rank 0 writes the step-0 checkpoint.
    moe_cfg = switchyard.load_config(args.moe, args.set + [f"train.steps={args.moe_steps}",
                                                            f"train.run_dir={out / 'moe'}",
                                                            f"checkpoint.resume={out / 'upcycled'}"])
    result = upcycle.upcycle(source, moe_cfg, out / "upcycled", upcycle.options(method="sparse", router_std=0.02))
    if info.rank == 0:
        print(f"[example] upcycled {source} -> {result['path']}; function preserved: "
              f"{result['preserves_function']} ({result['reason']})", flush=True)
        # Check it: the MoE's logits at initialisation are the dense model's.
        x = torch.randint(0, moe_cfg.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            dense_logits = checkpoint.load_model(source).eval()(x).logits
            moe_logits = checkpoint.load_model(result["path"]).eval()(x).logits
        print(f"[example] max |MoE - dense| logit difference at initialisation: "
              f"{(moe_logits - dense_logits).abs().max().item():.2e}", flush=True)

    # 3. The MoE trains on from there.
    summary = Trainer(moe_cfg, config_path=args.moe).run()
    if info.rank == 0:
        print(f"[example] MoE after {args.moe_steps} steps: train loss {summary['loss']:.4f}", flush=True)


if __name__ == "__main__":
    main()
