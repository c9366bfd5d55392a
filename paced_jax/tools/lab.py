"""The method lab: bootstrap a teacher and student, run every method x track x seed, report.

  python -m paced_jax.tools.lab --config=configs/lab.py            # all stages (resumes)
  python -m paced_jax.tools.lab --config=configs/lab.py:smoke
  python -m paced_jax.tools.lab --config=configs/lab.py bootstrap  # models + shared workspace only
  python -m paced_jax.tools.lab --config=configs/lab.py run        # (+ shared) every run
  python -m paced_jax.tools.lab --config=configs/lab.py report     # WORKDIR/report/lab.md from what exists
"""

from __future__ import annotations

from absl import app, logging
from absl import flags as absl_flags

from paced_jax import artifacts, config as config_lib, config_dict
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

STAGES = ("all", "bootstrap", "run", "report")


def main(argv):
  stage = argv[1] if len(argv) > 1 else "all"
  if len(argv) > 2 or stage not in STAGES:
    raise app.UsageError(f"expected at most one stage, one of {', '.join(STAGES)}; got {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  flags.enable_compilation_cache()
  if flags.CONFIG.value is None:
    raise config_lib.ConfigError("--config is required, e.g. --config=configs/lab.py:smoke")
  from paced_jax.lab import config as lab_config  # after flag parsing: these import jax
  from paced_jax.lab import report as lab_report
  from paced_jax.lab import runner as lab_runner
  try:
    lab = config_dict.to_dataclass(lab_config.LabConfig, flags.CONFIG.value)
  except (config_lib.ConfigError, ValueError) as e:
    flags.fail(f"config error: {e}")
  artifacts.lock_workdir(lab.workdir)  # its run workspaces are inside: one lock covers them
  if stage in ("all", "bootstrap", "run"):
    student, teacher = lab_runner.prepare_shared(lab)
    if stage != "bootstrap":
      lab_runner.run_all(lab, student, teacher)
  if stage in ("all", "report"):
    print(f"report: {lab_report.build(lab.workdir)}")


if __name__ == "__main__":
  flags.run(main, positional=True)
