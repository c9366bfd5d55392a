"""Gradient-SNR diagnostic per pass-rate bin (METHOD.md section 5) -> WORKDIR/snr/<tag>/.

  python -m paced_jax.tools.snr --config=configs/tiny.py                         # initial student, every problem
  python -m paced_jax.tools.snr --config=configs/tiny.py --step=latest --num_problems=64
  python -m paced_jax.tools.snr --config=configs/tiny.py --step=20               # tag step20
  python -m paced_jax.tools.snr --config=configs/tiny.py --param_regex='mlp/down_proj' --dim=0
"""

from __future__ import annotations

from absl import flags as absl_flags

from paced_jax import artifacts
from paced_jax.model import loaded as loaded_model
from paced_jax.analysis import snr
from paced_jax.analysis import snr_stats
from paced_jax.training import trainer
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

TAG = absl_flags.DEFINE_string("tag", None, "Results go to WORKDIR/snr/<tag>/ (default: initial, or step<N>).")
STEP = absl_flags.DEFINE_string("step", None, "'initial', 'latest' or a checkpoint step (default: config.snr.step).")
NUM_PROBLEMS = absl_flags.DEFINE_integer("num_problems", None, "Cap on the problems measured; 0 = all.")
EQUAL_N = absl_flags.DEFINE_bool("equal_n", None, "Cut every pass-rate bin to the smallest bin's size.")
DIM = absl_flags.DEFINE_integer("dim", None, "Count-sketch dimensions; 0 = the selected gradient itself.")
PARAM_REGEX = absl_flags.DEFINE_string("param_regex", None, "Only parameters whose path matches (re.search).")
SEED = absl_flags.DEFINE_integer("seed", None, "Problem selection, sketch hash and bootstrap seed.")
RESAMPLES = absl_flags.DEFINE_integer("resamples", None, "Bootstrap resamples.")
CONFIDENCE = absl_flags.DEFINE_float("confidence", None, "Simultaneous coverage of the bins' intervals.")
SOURCE = absl_flags.DEFINE_enum("source", None, ["auto", "offline", "on_policy"], "Where sequences come from.")
VMAP_ROWS = absl_flags.DEFINE_integer("vmap_rows", None, "Per-problem gradients held at once (memory).")


def main(argv):
  del argv
  cfg = flags.experiment()
  try:
    student, teacher = loaded_model.load_student_and_teacher(cfg)
  except loaded_model.ModelNotFoundError as e:  # a hub id not in the cache: one line, no traceback
    flags.fail(f"snr: {e}")
  step = {None: None, "initial": -1}.get(STEP.value, STEP.value)
  if step == "latest":
    with trainer.checkpoint_manager(cfg.workdir) as mngr:
      step = mngr.latest_step()
    if step is None:
      flags.fail(f"snr: {cfg.workdir}/checkpoints: no checkpoint to restore")
  try:
    directory = snr.run(cfg, student, teacher, tag=TAG.value, step=None if step is None else int(step),
                        num_problems=NUM_PROBLEMS.value, equal_n=EQUAL_N.value, dim=DIM.value,
                        param_regex=PARAM_REGEX.value, seed=SEED.value, resamples=RESAMPLES.value,
                        confidence=CONFIDENCE.value, source=SOURCE.value, vmap_rows=VMAP_ROWS.value)
  except (artifacts.ArtifactError, FileNotFoundError, ValueError) as e:
    flags.fail(f"snr: {e}")
  rows = snr_stats.read_csv(f"{directory}/snr.csv")
  for row in rows:
    print("  ".join(f"{k}={row[k]}" for k in ("p", "n", "snr", "noise_floor", "rho", "rho_lo", "rho_hi", "w")))
  print(open(f"{directory}/{snr.SUMMARY}").read().strip())
  print(f"results: {directory}")


if __name__ == "__main__":
  flags.run(main)
