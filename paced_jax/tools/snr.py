"""Gradient-SNR diagnostic per pass-rate bin (METHOD.md section 5) -> WORKDIR/snr/<tag>/.

  python -m paced_jax.tools.snr --config=configs/tiny.py                         # initial student
  python -m paced_jax.tools.snr --config=configs/tiny.py --checkpoint=latest --num_problems=64
  python -m paced_jax.tools.snr --config=configs/tiny.py --param_regex='mlp/down_proj' --dim=0
"""

from __future__ import annotations

from absl import app, flags as absl_flags

from paced_jax import artifacts
from paced_jax.model import loaded as loaded_model
from paced_jax.analysis import snr
from paced_jax.analysis import snr_stats
from paced_jax.training import trainer
from paced_jax.tools import flags

TAG = absl_flags.DEFINE_string("tag", None, "Results go to WORKDIR/snr/<tag>/ (default: initial, or step<N>).")
CHECKPOINT = absl_flags.DEFINE_string("checkpoint", "", "'' = the initial student; 'latest' or a step number.")
NUM_PROBLEMS = absl_flags.DEFINE_integer("num_problems", None, "Training problems to take gradients of.")
DIM = absl_flags.DEFINE_integer("dim", None, "Count-sketch dimensions; 0 = the selected gradient itself.")
PARAM_REGEX = absl_flags.DEFINE_string("param_regex", None, "Only parameters whose path matches (re.search).")
SEED = absl_flags.DEFINE_integer("seed", None, "Problem selection, sketch hash and bootstrap seed.")
RESAMPLES = absl_flags.DEFINE_integer("resamples", None, "Bootstrap resamples.")
CONFIDENCE = absl_flags.DEFINE_float("confidence", None, "Bootstrap interval coverage.")
SOURCE = absl_flags.DEFINE_enum("source", None, ["auto", "offline", "on_policy"], "Where sequences come from.")
VMAP_ROWS = absl_flags.DEFINE_integer("vmap_rows", None, "Per-problem gradients held at once (memory).")


def main(argv):
  del argv
  cfg = flags.experiment()
  student, teacher = loaded_model.load_student_and_teacher(cfg)
  params, fingerprint, tag = None, None, TAG.value or "initial"
  if CHECKPOINT.value:
    step = None if CHECKPOINT.value == "latest" else int(CHECKPOINT.value)
    step, params = trainer.restore_params(cfg, student, step)
    fingerprint, tag = f"{student.fingerprint}@step{step}", TAG.value or f"step{step}"
  try:
    directory = snr.run(cfg, student, teacher, tag=tag, params=params, fingerprint=fingerprint,
                        num_problems=NUM_PROBLEMS.value, dim=DIM.value, param_regex=PARAM_REGEX.value,
                        seed=SEED.value, resamples=RESAMPLES.value, confidence=CONFIDENCE.value,
                        source=SOURCE.value, vmap_rows=VMAP_ROWS.value)
  except (artifacts.ArtifactError, FileNotFoundError, ValueError) as e:
    raise SystemExit(f"snr: {e}") from None
  for row in snr_stats.read_csv(f"{directory}/snr.csv"):
    print("  ".join(f"{k}={row[k]}" for k in ("p", "n", "snr", "lo", "hi", "w")))
  print(f"results: {directory}")


if __name__ == "__main__":
  app.run(main)
