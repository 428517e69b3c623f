"""The training loop of ``python -m switchyard.train``: data -> forward -> loss + balancing
losses -> backward -> sharded AdamW step -> learning-rate schedule -> periodic evaluation ->
logging. Every rank runs it; rank 0 reports and writes the run directory.

The pieces are the library's own: ``switchyard.nn.MoETransformer`` (the model),
``switchyard.sharding.ShardedEngine`` (expert parallelism + FSDP-style sharding + AdamW),
``switchyard.data`` (corpus, tokenizer, sharded loaders), ``training.metrics`` (CSV,
TensorBoard) and ``switchyard.plot``.
"""

import math
import time
from pathlib import Path
from typing import List, Optional

import torch

from .metrics import RunLogger
from .progress import Progress
from .schedule import learning_rate


def _mean_over_world(world, values: List[float]) -> List[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world.size > 1:
        world.all_reduce(t, "avg")
    return t.tolist()


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
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
        })
        if self.rank == 0:
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())

    def evaluate(self) -> float:
        losses = []
        for _ in range(self.cfg.train.eval_steps):
            x, y = self.val_data.next_batch(self.cfg.train.micro_batch_size)
            losses.append(float(self.engine.eval_loss(x, y)))
        return _mean_over_world(self.world, [sum(losses) / len(losses)])[0]

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
            if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
                val_loss = self.evaluate()
                last["val_loss"] = val_loss
            if done % t.log_every == 0 or done == t.steps or val_loss is not None:
                loads = [c.to(torch.float64) for c in out.get("expert_counts", [])]
                dropped = float(out.get("num_dropped", 0))
                slots = float(out.get("num_slots", 0))
                summed = torch.stack(loads).flatten() if loads else torch.zeros(0, dtype=torch.float64)
                reduce = torch.cat([torch.tensor([out["loss"], out["aux_loss"], dropped, slots],
                                                 dtype=torch.float64), summed])
                if self.world.size > 1:
                    self.world.all_reduce(reduce, "sum")
                n = self.world.size
                loss, aux = reduce[0].item() / n, reduce[1].item() / n
                per_layer = list(reduce[4:].view(len(loads), -1)) if loads else []
                elapsed = time.monotonic() - window_start
                values = {
                    "tokens": done * self.tokens_per_step,
                    "lr": lr,
                    "loss": loss,
                    "aux_loss": aux,
                    "grad_norm": float(out.get("grad_norm", math.nan)),
                    "load_max_over_mean": max((float(c.max() / c.mean()) for c in per_layer if c.sum() > 0),
                                              default=None),
                    "dropped_fraction": reduce[2].item() / reduce[3].item() if reduce[3].item() > 0 else None,
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
