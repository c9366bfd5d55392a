"""One tiny prepared workspace per test session (pass rates, references, teacher store), shared by
the diagnostic and report tests so the expensive stages run once."""

from __future__ import annotations

import jax

from paced_jax.evaluation import pass_rate
from paced_jax.teacher import reference
from paced_jax.teacher import stage as teacher_stage
from stage_fixtures import load_student, tiny_experiment

_CACHE: dict = {}


def prepared(tmp_path_factory):
  """(workdir, student on one device); callers that write more than a tagged subdirectory copy it first."""
  if "workspace" not in _CACHE:
    workdir = str(tmp_path_factory.mktemp("tiny_workspace"))
    cfg = tiny_experiment(workdir)
    student = load_student(cfg, jax.devices()[:1])
    pass_rate.run(cfg, student)
    reference.run(cfg, student)
    teacher_stage.run(cfg, student)
    _CACHE["workspace"] = (workdir, student)
  return _CACHE["workspace"]
