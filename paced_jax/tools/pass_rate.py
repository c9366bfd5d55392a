"""Estimate the student's pass rate on every training problem (K rollouts each).

  python -m paced_jax.tools.pass_rate --config=configs/tiny.py
"""

from __future__ import annotations

from absl import flags as absl_flags

from paced_jax import mesh as mesh_lib
from paced_jax.model import loaded as loaded_model
from paced_jax.evaluation import pass_rate
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too


def main(argv):
  del argv
  cfg = flags.experiment()
  mesh = mesh_lib.make_mesh(cfg.mesh)
  try:
    student = loaded_model.load(cfg.student, mesh, cfg.model)
  except loaded_model.ModelNotFoundError as e:  # a hub id not in the cache: one line, no traceback
    flags.fail(f"pass_rate: {e}")
  print(pass_rate.run(cfg, student))


if __name__ == "__main__":
  flags.run(main)
