"""Write the run report WORKDIR/report/report.md (+ PNG plots), optionally comparing other runs.

  python -m paced_jax.tools.report --workdir=workdir/tiny
  python -m paced_jax.tools.report --config=configs/tiny.py --compare=/runs/uniform,/runs/hard_filter
"""

from __future__ import annotations

from absl import flags as absl_flags

from paced_jax.analysis import report
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

WORKDIR = absl_flags.DEFINE_string("workdir", None, "The run's workdir (default: the --config's workdir).")
COMPARE = absl_flags.DEFINE_list("compare", [], "Other runs' workdirs: one row each in the comparison tables.")


def main(argv):
  del argv
  workdir = WORKDIR.value or flags.experiment().workdir
  print(report.build_report(workdir, compare=COMPARE.value))


if __name__ == "__main__":
  flags.run(main)
