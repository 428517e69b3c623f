"""A loss that goes non-finite stops the run naming the step and the first layer whose
output did, and writes no checkpoint after the last good one.

Trains 2 steps (checkpoint at step 2), then poisons the experts of the second transformer
block (blocks.1) with Inf on every rank and resumes. Prints on rank 0
"stopped: <TrainingError message>" and "checkpoints: [steps]".

Usage: mpirun -np R python nan_stop.py RUN_DIR [KEY=VALUE ...]
"""

import sys

import torch

import switchyard
from switchyard import checkpoint
from switchyard.training.trainer import Trainer, TrainingError


def main():
    run_dir, overrides = sys.argv[1], sys.argv[2:]
    info = switchyard.init()
    base = ["train.steps=5", f"train.run_dir={run_dir}", "checkpoint.save_every=2"] + overrides
    Trainer(switchyard.load_config("configs/demo.yaml", base + ["checkpoint.stop_at_step=2"])).run()

    trainer = Trainer(switchyard.load_config("configs/demo.yaml", base + ["checkpoint.resume=latest"]))
    state = trainer.engine.shard_state_dict()
    poisoned = [k for k in state if k.startswith("model.layers.1.mlp.experts.") and k.endswith(".param")]
    assert poisoned, sorted(state)
    for k in poisoned:
        state[k] = torch.full_like(state[k], float("inf"))
    trainer.engine.load_shard_state_dict(state)
    try:
        trainer.run()
    except TrainingError as e:
        if info.rank == 0:
            print(f"stopped: {e}", flush=True)
            print(f"checkpoints: {[s for s, _ in checkpoint.list_checkpoints(trainer.checkpoint_root)]}", flush=True)
        return
    raise SystemExit("the run did not stop on an infinite expert")


if __name__ == "__main__":
    main()
