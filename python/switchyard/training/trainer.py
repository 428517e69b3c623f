"""The training loop of ``python -m switchyard.train``: data -> forward -> loss + balancing
losses -> backward -> sharded AdamW step -> learning-rate schedule -> periodic evaluation ->
logging. Every rank runs it; rank 0 reports and writes the run directory.

The pieces are the library's own: ``switchyard.nn.MoETransformer`` (the model),
``switchyard.sharding.ShardedEngine`` (expert parallelism + FSDP-style sharding + AdamW),
``switchyard.data`` (corpus, tokenizer, sharded loaders), ``training.metrics`` (CSV,
TensorBoard) and ``switchyard.plot``.
"""

import math
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .metrics import RunLogger
from .progress import Progress
from .schedule import learning_rate


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _routing_stats(stats: Dict[str, torch.Tensor]) -> Tuple[List[torch.Tensor], float]:
    """From the engine's per-unit statistics ("<unit>.<name>"): every MoE block's
    expert_counts ([E], in block order) and the total of num_dropped."""
    loads = [stats[k] for k in sorted(stats, key=_natural_key) if k.endswith(".expert_counts")]
    dropped = sum(float(v) for k, v in stats.items() if k.endswith(".num_dropped"))
    return loads, dropped


def _resolve_run_dir(cfg, config_path: Optional[str]) -> Path:
    run_dir = Path(cfg.train.run_dir)
    return run_dir if run_dir.is_absolute() else Path.cwd() / run_dir


class Trainer:
    """Builds everything a run needs from a config and runs ``train.steps`` optimizer steps.

    ``Trainer(cfg).run()`` returns a summary dict (final train/val loss, unigram entropy,
    run directory, files written)."""

    def __init__(self, cfg, config_path: Optional[str] = None):
        import switchyard
        import switchyard.comm as comm
        from switchyard.data import build_dataset
        from switchyard.nn import MoETransformer
        from switchyard.sharding import ShardedEngine

        self.cfg = cfg
        self.info = switchyard.init()
        self.world = comm.world()
        cfg.validate_for_world(self.world.size)
        self.groups = comm.groups(cfg)  # also checks every rank holds the same config
        self.rank = self.world.rank
        self.run_dir = _resolve_run_dir(cfg, config_path)

        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        self.model = MoETransformer.from_config(cfg)
        # Counted now: the engine keeps only this rank's experts and shards the rest.
        num_parameters = int(sum(p.numel() for p in self.model.parameters()))
        self.engine = ShardedEngine(self.model, cfg, self.groups)
        self.train_data, self.val_data, self.tokenizer = build_dataset(cfg, self.rank, self.world.size)

        self.tokens_per_step = (cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.data.seq_len
                                * self.world.size)
        self.entropy = float(self.train_data.unigram_entropy())
        self.log = RunLogger(self.run_dir, enabled=self.rank == 0)
        self.log.write_facts({
            "title": f"{Path(config_path).stem if config_path else 'run'}: "
                     f"{cfg.model.n_layers} layers, d={cfg.model.d_model}, "
                     f"{cfg.moe.num_experts} experts top-{cfg.moe.top_k}, {self.world.size} ranks",
            "config": config_path,
            "world_size": self.world.size,
            "tokens_per_step": self.tokens_per_step,
            "unigram_entropy_nats": self.entropy,
            "parameters": num_parameters,
        })
        if self.rank == 0:
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())

    def evaluate(self) -> float:
        """Mean validation loss over train.eval_steps micro-batches of every rank."""
        self.val_data.reset()  # the same validation batches at every evaluation
        batches = [self.val_data.next_batch(self.cfg.train.micro_batch_size)
                   for _ in range(self.cfg.train.eval_steps)]
        return float(self.engine.eval_loss(batches))

    def run(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        progress = Progress(t.steps, enabled=self.rank == 0,
                            reference=f"unigram entropy {self.entropy:.3f}")
        progress.message(f"[switchyard] training {t.steps} steps on {self.world.size} rank(s), "
                         f"{self.tokens_per_step} tokens/step; run directory {self.run_dir}")
        last = {"loss": math.nan, "val_loss": None}
        window_start, window_tokens = time.monotonic(), 0
        for step in range(t.steps):
            lr = learning_rate(step, t)
            micro = [self.train_data.next_batch(t.micro_batch_size) for _ in range(t.grad_accum)]
            out = self.engine.step(micro, lr)
            window_tokens += self.tokens_per_step
            done = step + 1
            val_loss = None
            if self.val_data is not None and t.eval_every and (done % t.eval_every == 0 or done == t.steps):
                val_loss = self.evaluate()
                last["val_loss"] = val_loss
            if done % t.log_every == 0 or done == t.steps or val_loss is not None:
                # Routing statistics are per rank (its tokens, its last micro-batch): sum
                # them over the job. Loss and aux loss come back already averaged.
                loads, dropped = _routing_stats(out["stats"])
                slots = sum(float(c.sum()) for c in loads)
                reduce = torch.cat([torch.tensor([dropped, slots], dtype=torch.float64)]
                                   + [c.to(torch.float64).flatten() for c in loads])
                if self.world.size > 1:
                    self.world.all_reduce(reduce, "sum")
                loss, aux = float(out["loss"]), float(out["aux_loss"])
                per_layer = list(reduce[2:].view(len(loads), -1)) if loads else []
                elapsed = time.monotonic() - window_start
                values = {
                    "tokens": done * self.tokens_per_step,
                    "lr": lr,
                    "loss": loss,
                    "aux_loss": aux,
                    "grad_norm": float(out.get("grad_norm", math.nan)),
                    "load_max_over_mean": max((float(c.max() / c.mean()) for c in per_layer if c.sum() > 0),
                                              default=None),
                    "dropped_fraction": (reduce[0].item() / (reduce[0].item() + reduce[1].item())
                                         if loads and reduce[0].item() + reduce[1].item() > 0 else None),
                    "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                    "val_loss": val_loss,
                }
                self.log.log(done, values)
                self.log.log_expert_load(done, per_layer)
                progress.update(done, values)
                last["loss"] = loss
                window_start, window_tokens = time.monotonic(), 0
        progress.close()
        self.log.close()
        summary = {"loss": last["loss"], "val_loss": last["val_loss"], "unigram_entropy": self.entropy,
                   "run_dir": str(self.run_dir), "files": []}
        if self.rank == 0:
            from switchyard.plot import plot_run

            summary["files"] = [str(p) for p in plot_run(self.run_dir)]
            progress.message(
                f"[switchyard] done: train loss {last['loss']:.4f}"
                + (f", validation loss {last['val_loss']:.4f}" if last["val_loss"] is not None else "")
                + f" (unigram entropy of the corpus: {self.entropy:.4f} nats/token)\n"
                f"[switchyard] metrics: {self.run_dir / 'metrics.csv'}; TensorBoard: tensorboard --logdir "
                f"{self.run_dir / 'tensorboard'}\n[switchyard] plots: " + ", ".join(summary["files"]))
        return summary
