"""Train the student with PACED weights (resumes from the latest checkpoint).

  python -m paced_jax.tools.train --config=configs/tiny.py
"""

from __future__ import annotations

from absl import flags as absl_flags

from paced_jax.model import loaded as loaded_model
from paced_jax.training import trainer
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too


def main(argv):
  del argv
  cfg = flags.experiment()
  try:
    student, teacher = loaded_model.load_student_and_teacher(cfg)
  except loaded_model.ModelNotFoundError as e:  # a hub id not in the cache: one line, no traceback
    flags.fail(f"train: {e}")
  trainer.train(cfg, student, teacher)


if __name__ == "__main__":
  flags.run(main)
