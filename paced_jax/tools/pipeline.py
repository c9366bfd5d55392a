"""Run the whole PACED pipeline in one workspace (resumes; skips finished stages).

  python -m paced_jax.tools.pipeline --config=configs/demo.py:quick
  python -m paced_jax.tools.pipeline --config=configs/tiny.py --config.workdir=/tmp/tiny
"""

from __future__ import annotations

from absl import flags as absl_flags

from paced_jax import pipeline
from paced_jax.model import loaded as loaded_model
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too


def main(argv):
  del argv
  try:
    pipeline.run(flags.experiment())
  except loaded_model.ModelNotFoundError as e:  # a hub id not in the cache: one line, no traceback
    flags.fail(f"pipeline: {e}")


if __name__ == "__main__":
  flags.run(main)
