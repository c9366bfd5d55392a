"""Train the student with PACED weights (resumes from the latest checkpoint).

  python -m paced_jax.tools.train --config=configs/tiny.py
"""

from __future__ import annotations

from absl import app

from paced_jax import loaded_model, mesh as mesh_lib, trainer
from paced_jax.tools import flags


def main(argv):
  del argv
  cfg = flags.experiment()
  mesh = mesh_lib.make_mesh(cfg.mesh)
  student = loaded_model.load(cfg.student, mesh, cfg.model)
  teacher = student if not cfg.teacher else loaded_model.load(cfg.teacher, mesh, cfg.model)
  trainer.train(cfg, student, teacher)


if __name__ == "__main__":
  app.run(main)
