"""Generate one teacher reference response per training problem.

  python -m paced_jax.tools.reference --config=configs/tiny.py:distill
"""

from __future__ import annotations

from absl import flags as absl_flags

from paced_jax import mesh as mesh_lib
from paced_jax.model import loaded as loaded_model
from paced_jax.teacher import reference
from paced_jax.teacher import stage as teacher_stage
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too


def main(argv):
  del argv
  cfg = flags.experiment()
  mesh = mesh_lib.make_mesh(cfg.mesh)
  try:
    teacher = loaded_model.load(cfg.teacher or cfg.student, mesh, cfg.model)
  except loaded_model.ModelNotFoundError as e:  # a hub id not in the cache: one line, no traceback
    flags.fail(f"reference: {e}")
  print(reference.run(cfg, teacher))
  print(teacher_stage.run(cfg, teacher))


if __name__ == "__main__":
  flags.run(main)
