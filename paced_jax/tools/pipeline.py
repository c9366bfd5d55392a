"""Run the whole PACED pipeline in one workspace (resumes; skips finished stages).

  python -m paced_jax.tools.pipeline --config=configs/demo.py:quick
  python -m paced_jax.tools.pipeline --config=configs/tiny.py --config.workdir=/tmp/tiny
"""

from __future__ import annotations

from absl import flags as absl_flags

from paced_jax import pipeline
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too


def main(argv):
  del argv
  pipeline.run(flags.experiment())


if __name__ == "__main__":
  flags.run(main)
