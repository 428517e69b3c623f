"""Rank 0's view of a run: a live bar on a terminal (tqdm), or one line per logged step
when the output is a pipe or a file (mpirun, CI), so logs stay readable."""

import sys
import time
from typing import Mapping


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total_steps: int, enabled: bool, reference: str = ""):
        self.total = total_steps
        self.enabled = enabled
        self.reference = reference  # e.g. "unigram entropy 7.12", shown beside the loss
        self.start = time.monotonic()
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)

    def update(self, step: int, values: Mapping[str, float]) -> None:
        """step: optimizer steps done so far (1-based)."""
        if not self.enabled:
            return
        parts = [f"loss {values['loss']:.4f}"]
        if self.reference:
            parts.append(f"({self.reference})")
        if values.get("val_loss") is not None:
            parts.append(f"val {values['val_loss']:.4f}")
        parts.append(f"aux {values['aux_loss']:.4f}")
        if values.get("load_max_over_mean") is not None:
            parts.append(f"load max/mean {values['load_max_over_mean']:.2f}")
        if values.get("dropped_fraction") is not None:
            parts.append(f"dropped {100 * values['dropped_fraction']:.2f}%")
        parts.append(f"{values['tokens_per_s']:,.0f} tok/s")
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(" ".join(parts), refresh=True)
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(step, 1) * (self.total - step)
        print(f"step {step}/{self.total} " + " ".join(parts) + f" eta {_fmt_time(eta)}", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
