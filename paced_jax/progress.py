"""Progress bars whose ETA leaves out compilation; wall time, compile time and memory per pipeline stage.

The first unit of a stage's work includes compiling its jitted functions (seconds to minutes on a
CPU), so an ETA from the average rate first promises hours. `bar` is tqdm with the rate, and so
the ETA, measured from the end of the first update on (shown as `?` until a second update); the
elapsed time still counts from the start. `StageClock` times the pipeline's stages, counts through
jax.monitoring how much of each went to tracing, lowering and compiling, and notes the process's
peak resident memory at the end of each.
"""

from __future__ import annotations

import resource
import time

from tqdm.auto import tqdm

# jax.monitoring duration events of making an executable (jax/_src/dispatch.py); a persistent
# compilation cache hit skips the backend compile.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class _Bar(tqdm):
  """tqdm whose rate counts only the units done after the first update (which paid the compile)."""

  def __init__(self, *args, **kwargs):
    self._warm = None  # (n, time) at the end of the first update
    super().__init__(*args, **kwargs)

  def update(self, n=1):
    shown = super().update(n)
    if self._warm is None and n and not self.disable:
      self._warm = (self.n, time.monotonic())
    return shown

  @property
  def format_dict(self):
    d = super().format_dict
    if self._warm is None or self.n <= self._warm[0]:
      d["rate"] = 0  # tqdm shows `?` for a zero rate
    else:
      d["rate"] = (self.n - self._warm[0]) / max(time.monotonic() - self._warm[1], 1e-9)
    return d


def bar(iterable=None, **kwargs) -> tqdm:
  """A progress bar (tqdm's arguments) with an ETA that excludes compilation."""
  return _Bar(iterable, **kwargs)


class StageClock:
  """Wall time, compile time (tracing + lowering + XLA) and peak RSS per named stage of one process."""

  def __init__(self):
    self.start = time.perf_counter()
    self.stages: list[list] = []  # [name, wall s, compile s, peak RSS GiB so far]; the last one is running
    self._stage_start = self.start
    import jax  # deferred: a bar needs no jax
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS and self.stages:
      self.stages[-1][2] += duration

  def begin(self, name: str) -> None:
    self._close()
    self.stages.append([name, 0.0, 0.0, 0.0])
    self._stage_start = time.perf_counter()

  def _close(self) -> None:
    if self.stages:
      self.stages[-1][1] = time.perf_counter() - self._stage_start
      self.stages[-1][3] = peak_rss_gib()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def close(self) -> None:
    """Stop counting compile events (the listener is process-wide)."""
    import jax
    self._close()
    jax.monitoring.unregister_event_duration_listener(self._on_event)

  def summary(self) -> str:
    """One line per stage: wall seconds, of which compiling, and the peak RSS up to its end."""
    self._close()
    width = max((len(s[0]) for s in self.stages), default=5)
    lines = [f"  {name:<{width}}  {wall:6.1f} s  (compile {comp:5.1f} s)  peak RSS {rss:4.1f} GiB"
             for name, wall, comp, rss in self.stages]
    total_compile = sum(s[2] for s in self.stages)
    lines.append(f"  {'total':<{width}}  {self.elapsed():6.1f} s  (compile {total_compile:5.1f} s)")
    return "\n".join(lines)


def peak_rss_gib() -> float:
  """This process's peak resident set size so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def format_seconds(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f"{m}:{s:02d}"
