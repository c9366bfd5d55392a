"""The method lab's settings: one LabConfig (configs/lab.py) and the names of its methods and tracks.

Kept apart from the runner so that a config file, or a bootstrap on another machine, can build
it without importing the training stages.
"""

from __future__ import annotations

import dataclasses
import re

from paced_jax.config import ExperimentConfig
from paced_jax.lab.bootstrap import BootstrapConfig

TRACKS = ("distill", "self_distill", "two_stage")
# name -> (weight scheme, divergence override): AKL is the paper's baseline with uniform weights.
BASELINES = {"uniform": ("uniform", ""), "hard_filter": ("hard_filter", ""), "akl": ("uniform", "akl")}
LABELS = {"uniform": "uniform", "hard_filter": "hard filter", "akl": "AKL"}
# A method whose weights can be 0 trains on fewer problems than it draws, so it runs twice: on the same
# unique_problems as uniform, one pass (fewer steps), and for uniform's steps on fresh problems from the
# whole pool. A method whose weights are never 0 (uniform, AKL) has one run serving both comparisons.
BUDGETS = ("equal_data", "equal_steps")
BUDGET_LABELS = {"equal_data": "equal data", "equal_steps": "equal steps"}
_KERNEL_RE = re.compile(r"^paced(?:_a(?P<a>\d+(?:\.\d+)?)_b(?P<b>\d+(?:\.\d+)?))?$")


@dataclasses.dataclass(frozen=True)
class LabConfig:
  workdir: str = "workdir/lab"
  experiment: ExperimentConfig = ExperimentConfig()   # every run's settings, before the per-run changes
  bootstrap: BootstrapConfig = BootstrapConfig()
  methods: tuple[str, ...] = ("uniform", "hard_filter", "akl", "paced", "paced_a2_b2", "paced_a0.5_b2")
  tracks: tuple[str, ...] = TRACKS
  seeds: tuple[int, ...] = (0, 1, 2)
  # N: every run trains one pass (train.one_pass) over fresh generator problems; a method's equal-data
  # run over the pool's first N, its equal-steps run (and every run of uniform, AKL) for N / batch_size
  # steps (0 = the whole pool). experiment.problems.n_train is the pool; experiment.train.steps is
  # replaced by these.
  unique_problems: int = 0
  self_distill_context: str = "solution"   # the frozen initial student's privileged context
  retain_pool: int = 240                   # unseen problems tried for the solved (retain) set
  snr: bool = True                         # gradient SNR per track at the initial student and at the
                                           # midpoint checkpoint of uniform's seed-0 run

  def __post_init__(self):
    for m in self.methods:
      method_settings(m)
    bad = [t for t in self.tracks if t not in TRACKS]
    if bad:
      raise ValueError(f"lab tracks {bad}: expected some of {TRACKS}")
    if not self.seeds:
      raise ValueError("lab: at least one seed")
    B, pool = self.experiment.train.batch_size, self.experiment.problems.n_train
    if not 2 * B <= self.unique() <= pool:
      raise ValueError(f"lab unique_problems {self.unique_problems}: expected 2 x train.batch_size ({2 * B}) up to "
                       f"the pool experiment.problems.n_train ({pool})")
    if self.self_distill_context not in ("none", "answer_only", "solution"):
      raise ValueError(f"lab self_distill_context {self.self_distill_context!r}: expected none, answer_only or solution")


  def unique(self) -> int:
    """N, the unique problems of an equal-data run."""
    return self.unique_problems or self.experiment.problems.n_train


def bootstrap_prompts(lab: LabConfig):
  """The prompts the bootstrap shows: the lab's, with the self-distillation teacher's context."""
  return dataclasses.replace(lab.experiment.prompts, teacher_context=lab.self_distill_context)


def method_settings(method: str) -> tuple[str, float, float, str]:
  """(weight scheme, alpha, beta, divergence override or '') of a method name.

  uniform | hard_filter | akl (uniform weights, AKL divergence) | paced (the Beta(1,1) kernel
  p (1 - p)) | paced_a<alpha>_b<beta> (the kernel p^alpha (1 - p)^beta).
  """
  if method in BASELINES:
    scheme, loss = BASELINES[method]
    return scheme, 1.0, 1.0, loss
  m = _KERNEL_RE.match(method)
  if not m:
    raise ValueError(f"unknown lab method {method!r}: expected {', '.join(BASELINES)}, paced or paced_a<x>_b<y>")
  return "paced", float(m["a"] or 1.0), float(m["b"] or 1.0), ""


def has_zero_weights(method: str) -> bool:
  return method_settings(method)[0] != "uniform"


def run_names(methods: tuple[str, ...]) -> list[str]:
  """The run of each method: `uniform`, `akl`; `paced.equal_data`, `paced.equal_steps`, ..."""
  return [name for m in methods for name in ([f"{m}.{b}" for b in BUDGETS] if has_zero_weights(m) else [m])]


def split_run_name(name: str) -> tuple[str, str]:
  """(method, budget) of a run name; budget '' for a run serving both comparisons."""
  for budget in BUDGETS:
    if name.endswith(f".{budget}"):
      return name[:-len(budget) - 1], budget
  return name, ""


def method_label(name: str) -> str:
  method, budget = split_run_name(name)
  if method in LABELS:
    label = LABELS[method]
  else:
    _, a, b, _ = method_settings(method)
    label = "PACED (1,1)" if (a, b) == (1.0, 1.0) else f"Beta({a:g},{b:g})"
  return label + (f" ({BUDGET_LABELS[budget]})" if budget else "")
