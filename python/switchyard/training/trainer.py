"""The training loop of ``python -m switchyard.train``: data -> forward -> loss + balancing
losses -> backward -> sharded AdamW step -> learning-rate schedule -> periodic evaluation ->
logging -> checkpoints. Every rank runs it; rank 0 reports and writes the run directory.

The pieces are the library's own: ``switchyard.nn.MoETransformer`` (the model),
``switchyard.sharding.ShardedEngine`` (expert parallelism + FSDP-style sharding + AdamW),
``switchyard.data`` (corpus, tokenizer, sharded loaders), ``switchyard.checkpoint``
(sharded, resharding checkpoints), ``training.metrics`` (CSV, TensorBoard) and
``switchyard.plot``.

Stopping (docs/checkpoints.md): the run saves every ``checkpoint.save_every`` steps and at
the end; SIGINT/SIGTERM or ``checkpoint.stop_at_step`` save and stop after the current step;
a non-finite loss stops the run naming the step and the first layer whose output went
non-finite, leaving the last good checkpoint as the newest one.
"""

import math
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from . import speculation_report
from .metrics import RunLogger
from .progress import Progress
from .schedule import learning_rate
from .signals import StopRequest


class TrainingError(RuntimeError):
    """A run that cannot go on (a non-finite loss, a checkpoint that does not load). Raised
    on every rank alike, so the job ends cleanly instead of aborting. ``echo``: a rank other
    than 0 only repeats what another rank says (rank 0 prints it; the others stay quiet)."""

    def __init__(self, message: str, echo: bool = False):
        super().__init__(message)
        self.echo = echo


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


def _agree(world, ok: bool, message: str) -> None:
    """Collective: raise TrainingError on every rank when any rank is not ok (each with its
    own message or a pointer to the failing ranks'), so no rank is left in a collective."""
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    if world.size > 1:
        world.all_reduce(flag, "sum")
    if flag.item():
        if not ok:
            raise TrainingError(message)
        raise TrainingError(f"{flag.item()} other rank(s) failed; see their messages", echo=True)


class Trainer:
    """Builds everything a run needs from a config and runs it to ``train.steps`` optimizer
    steps, resuming from ``checkpoint.resume`` when set.

    ``Trainer(cfg).run()`` returns a summary dict (final train/val loss, unigram entropy,
    run directory, files written, the step reached, why the run stopped, the last checkpoint)."""

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
        ckpt_dir = Path(cfg.checkpoint.dir)
        self.checkpoint_root = ckpt_dir if ckpt_dir.is_absolute() else self.run_dir / ckpt_dir
        self.last_checkpoint: Optional[str] = None

        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        self.model = MoETransformer.from_config(cfg)
        # Counted now: the engine keeps only this rank's experts and shards the rest.
        num_parameters = int(sum(p.numel() for p in self.model.parameters()))
        self.engine = ShardedEngine(self.model, cfg, self.groups)
        self.train_data, self.val_data, self.tokenizer = build_dataset(cfg, self.rank, self.world.size)

        self.tokens_per_step = (cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.data.seq_len
                                * self.world.size)
        self.entropy = float(self.train_data.unigram_entropy())
        self.live_placement = None
        pc = cfg.placement
        if pc.interval or pc.imbalance_threshold or pc.trace_path or pc.from_trace:
            from switchyard.placement import LivePlacement

            try:  # the checks are the same on every rank: all raise together
                self.live_placement = LivePlacement(self.engine, cfg)
            except ValueError as e:
                raise TrainingError(f"placement: {e}", echo=self.rank != 0) from None
        self.start_step = 0
        self.resumed_from = self._resume()
        if pc.from_trace and not self.resumed_from:  # a resumed run restores the saved placement
            self._place_from_trace(pc.from_trace)
        self.log = RunLogger(self.run_dir, enabled=self.rank == 0,
                             resume_step=self.start_step if self.resumed_from else None)
        self.log.write_facts({
            "title": f"{Path(config_path).stem if config_path else 'run'}: "
                     f"{cfg.model.n_layers} layers, d={cfg.model.d_model}, "
                     f"{cfg.moe.num_experts} experts top-{cfg.moe.top_k}, {self.world.size} ranks",
            "config": config_path,
            "world_size": self.world.size,
            "tokens_per_step": self.tokens_per_step,
            "unigram_entropy_nats": self.entropy,
            "parameters": num_parameters,
            "resumed_from": self.resumed_from,
        })
        if self.rank == 0:
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())

    # --- checkpoints -------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def _resume(self) -> Optional[str]:
        """Loads checkpoint.resume ("" = fresh, "latest", or a path) into the engine, the data
        position and the RNG; returns the checkpoint's path or None. Collective."""
        from switchyard import checkpoint

        want = self.cfg.checkpoint.resume
        if not want:
            return None
        error, path, info = "", None, None
        try:
            if want == "latest":
                path = checkpoint.latest(self.checkpoint_root)
                if path is None:
                    self._say(f"[switchyard] checkpoint.resume: latest, but {self.checkpoint_root} holds no "
                              "checkpoint yet: starting from scratch")
            else:
                path = checkpoint.resolve(want)
            if path is not None:
                info = checkpoint.load(path, self.engine, self.cfg)
                # An initial checkpoint (upcycled, imported) has weights but no data position.
                if "data" in info["metadata"]:
                    self.train_data.load_state_dict(info["metadata"]["data"])
                self._restore_placements(info["metadata"].get("expert_placements"))
        except (ValueError, KeyError, OSError) as e:
            error = f"cannot resume from {want!r}: {e}"
        except Exception as e:  # DataError and the like: still fail on every rank together
            error = f"cannot resume from {want!r}: {type(e).__name__}: {e}"
        _agree(self.world, not error, error)
        if info is None:
            return None
        self.start_step = int(info["step"])
        rng = info["rank_tensors"].get("rng_cpu")
        if rng is not None:
            torch.set_rng_state(rng)
        else:  # another world size: no saved state fits this rank; derive one deterministically
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * self.start_step + self.rank)
        if info["changed_keys"]:
            self._say("[switchyard] note: resuming with model/moe keys that differ from the checkpoint's "
                      "(shapes unchanged): " + "; ".join(info["changed_keys"]))
        self._say(f"[switchyard] resumed from {path} at step {self.start_step} "
                  f"(written by {info['saved_world_size']} rank(s), now {self.world.size})")
        self.last_checkpoint = path
        return path

    def _place_from_trace(self, trace: str) -> None:
        """placement.from_trace: solve every layer's placement from a recorded routing trace
        and move the experts before the first step. Fails on every rank, naming the file and
        the mismatch, for a trace of another model shape. Collective."""
        error, decision = "", None
        try:
            decision = self.live_placement.place_from_trace(trace)
        except (ValueError, OSError, RuntimeError) as e:
            error = f"placement.from_trace: {e}"
        _agree(self.world, not error, error)
        self._say("[switchyard] " + decision["text"])

    def _restore_placements(self, saved) -> None:
        """Live re-placement moved experts: put them where the checkpoint's run had them, so
        the resumed run sums in the same order. Skipped when the expert-parallel size changed
        (the saved maps are for another number of ranks). Collective."""
        layers = self.engine.expert_layers()
        if not saved or not layers or len(saved) != len(layers):
            return
        if any(max(m) + 1 != self.cfg.parallel.expert_parallel for m in saved):  # every rank holds one
            return
        if saved != [l["placement"] for l in layers]:
            self.engine.set_expert_placements(saved)

    def save_checkpoint(self, step: int, reason: str) -> str:
        """Saves the engine, the data position and every rank's RNG state as step ``step``.
        Collective."""
        from switchyard import checkpoint

        metadata = {
            "data": self.train_data.state_dict(),
            "trainer": {"step": step, "reason": reason, "tokens": step * self.tokens_per_step,
                        "world_size": self.world.size},
            "expert_placements": [l["placement"] for l in self.engine.expert_layers()],
        }
        self.last_checkpoint = checkpoint.save(self.checkpoint_root, step, self.engine, self.cfg, metadata,
                                               {"rng_cpu": torch.get_rng_state()})
        return self.last_checkpoint

    def _stop_on_non_finite(self, step: int, loss: float, micro) -> None:
        """The loss went NaN/Inf: find the first layer whose output did (re-running the
        step's micro-batches forward) and stop on every rank, saving nothing."""
        where = None
        for input_ids, targets in micro:
            report = self.engine.locate_non_finite(input_ids, targets)
            if report["unit"] >= 0:
                where = report
                break
        if where is not None:
            ranks = ", ".join(str(r) for r in where["ranks"])
            place = (f"the first layer whose output went non-finite is '{where['unit_name']}' "
                     f"(unit {where['unit']} of {self.model.num_units()}, on rank(s) {ranks})")
        else:
            place = "re-running the step's micro-batches forward stayed finite (the non-finite value arose in backward)"
        kept = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                else "no checkpoint was written before it")
        raise TrainingError(f"step {step}: the loss is {loss} (non-finite); {place}. Stopping without saving; "
                            f"{kept}.", echo=self.rank != 0)

    # --- the loop ------------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Mean validation loss over train.eval_steps micro-batches of every rank."""
        self.val_data.reset()  # the same validation batches at every evaluation
        batches = [self.val_data.next_batch(self.cfg.train.micro_batch_size)
                   for _ in range(self.cfg.train.eval_steps)]
        return float(self.engine.eval_loss(batches))

    def run(self) -> dict:
        cfg, t, c = self.cfg, self.cfg.train, self.cfg.checkpoint
        last_step = t.steps if not c.stop_at_step else min(t.steps, c.stop_at_step)
        progress = Progress(t.steps, enabled=self.rank == 0,
                            reference=f"unigram entropy {self.entropy:.3f}")
        progress.message(f"[switchyard] training steps {self.start_step + 1}..{last_step} of {t.steps} on "
                         f"{self.world.size} rank(s), {self.tokens_per_step} tokens/step; run directory {self.run_dir}")
        last = {"loss": math.nan, "val_loss": None}
        window_start, window_tokens = time.monotonic(), 0
        stop = StopRequest(self.rank)
        reason = "finished" if self.start_step < t.steps else "already finished"
        done = self.start_step
        try:
            for step in range(self.start_step, last_step):
                lr = learning_rate(step, t)
                micro = [self.train_data.next_batch(t.micro_batch_size) for _ in range(t.grad_accum)]
                out = self.engine.step(micro, lr)
                window_tokens += self.tokens_per_step
                done = step + 1
                if not math.isfinite(float(out["loss"])):
                    progress.close()
                    self._stop_on_non_finite(done, float(out["loss"]), micro)
                if self.live_placement is not None:
                    decision = self.live_placement.after_step(done)
                    if decision is not None:
                        progress.message("[switchyard] " + decision["text"])
                        self.log.log_placement(decision)
                val_loss = None
                if self.val_data is not None and t.eval_every and (done % t.eval_every == 0 or done == t.steps):
                    val_loss = self.evaluate()
                    last["val_loss"] = val_loss
                if done % t.log_every == 0 or done == t.steps or val_loss is not None:
                    self._log_step(done, lr, out, val_loss, window_tokens, time.monotonic() - window_start, progress)
                    last["loss"] = float(out["loss"])
                    window_start, window_tokens = time.monotonic(), 0
                signalled = stop.agreed(self.world)
                if signalled:
                    reason = f"stopped by {stop.signal_name or 'a signal to another rank'}"
                elif done == last_step and done < t.steps:
                    reason = f"stopped at checkpoint.stop_at_step {c.stop_at_step}"
                if (c.save_every and done % c.save_every == 0) or done == last_step or signalled:
                    path = self.save_checkpoint(done, reason if (signalled or done == last_step) else "periodic")
                    progress.message(f"[switchyard] checkpoint of step {done}: {path}")
                if signalled:
                    break
        finally:
            stop.close()
        if self.live_placement is not None and cfg.placement.trace_path:
            trace = Path(cfg.placement.trace_path)
            trace = trace if trace.is_absolute() else self.run_dir / trace
            self.live_placement.write_trace(str(trace))
            progress.message(f"[switchyard] routing trace of {done - self.start_step} steps: {trace} "
                             f"(python -m switchyard.trace {trace})")
        spec = speculation_report.job_counters(self.model, self.world)
        if spec is not None and self.rank == 0:
            from switchyard.dispatch import SpeculationOptions

            options = repr(SpeculationOptions.from_config(cfg))
            speculation_report.write(self.run_dir / "speculation.json", spec, self.world.size, options)
            progress.message(speculation_report.summary_line(spec, self.world.size, options))
        progress.close()
        self.log.close()
        summary = {"loss": last["loss"], "val_loss": last["val_loss"], "unigram_entropy": self.entropy,
                   "run_dir": str(self.run_dir), "files": [], "step": done, "reason": reason,
                   "checkpoint": self.last_checkpoint}
        if self.rank == 0:
            from switchyard.plot import plot_run

            summary["files"] = [str(p) for p in plot_run(self.run_dir)]
            resume_hint = ""
            if done < t.steps:
                resume_hint = ("\n[switchyard] continue with the same command plus --set checkpoint.resume=latest")
            progress.message(
                f"[switchyard] {reason} at step {done} of {t.steps}: train loss {last['loss']:.4f}"
                + (f", validation loss {last['val_loss']:.4f}" if last["val_loss"] is not None else "")
                + f" (unigram entropy of the corpus: {self.entropy:.4f} nats/token)\n"
                f"[switchyard] metrics: {self.run_dir / 'metrics.csv'}; TensorBoard: tensorboard --logdir "
                f"{self.run_dir / 'tensorboard'}\n[switchyard] plots: " + ", ".join(summary["files"])
                + (f"\n[switchyard] last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "")
                + resume_hint)
        return summary

    def _log_step(self, done: int, lr: float, out: dict, val_loss, window_tokens: int, elapsed: float,
                  progress: Progress) -> None:
        # Routing statistics are per rank (its tokens, its last micro-batch): sum them over
        # the job. Loss and aux loss come back already averaged.
        loads, dropped = _routing_stats(out["stats"])
        slots = sum(float(c.sum()) for c in loads)
        reduce = torch.cat([torch.tensor([dropped, slots], dtype=torch.float64)]
                           + [c.to(torch.float64).flatten() for c in loads])
        if self.world.size > 1:
            self.world.all_reduce(reduce, "sum")
        per_layer = list(reduce[2:].view(len(loads), -1)) if loads else []
        values = {
            "tokens": done * self.tokens_per_step,
            "lr": lr,
            "loss": float(out["loss"]),
            "aux_loss": float(out["aux_loss"]),
            "grad_norm": float(out.get("grad_norm", math.nan)),
            "load_max_over_mean": max((float(c.max() / c.mean()) for c in per_layer if c.sum() > 0), default=None),
            "dropped_fraction": (reduce[0].item() / (reduce[0].item() + reduce[1].item())
                                 if loads and reduce[0].item() + reduce[1].item() > 0 else None),
            "tokens_per_s": window_tokens / max(elapsed, 1e-9),
            "val_loss": val_loss,
        }
        self.log.log(done, values)
        self.log.log_expert_load(done, per_layer)
        progress.update(done, values)
