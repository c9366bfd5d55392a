"""Evaluate a model on the config's benchmarks (mean@k) and retain set -> WORKDIR/eval/<tag>/; the config's
student and its checkpoints are also logged to the run's metrics (TensorBoard, W&B) at their step.

  python -m paced_jax.tools.evaluate --config=configs/tiny.py                    # initial student
  python -m paced_jax.tools.evaluate --config=configs/demo.py --model_dir=/m/hf --tag=final
  python -m paced_jax.tools.evaluate --config=configs/demo.py --step=50            # a checkpoint -> eval/step50/
  python -m paced_jax.tools.evaluate --config=configs/tiny.py \
      --config.eval.benchmarks='("heldout", "builtin:champ:n=16")' --config.eval.retain_set=builtin:arith_mc
"""

from __future__ import annotations

from absl import flags as absl_flags

from paced_jax import pipeline, workspace
from paced_jax import artifacts, mesh as mesh_lib
from paced_jax.evaluation import benchmarks
from paced_jax.evaluation import evaluate
from paced_jax.model import loaded as loaded_model
from paced_jax.problems import records
from paced_jax.evaluation import retain_sets
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

TAG = absl_flags.DEFINE_string("tag", evaluate.BASELINE_TAG, "Results go to WORKDIR/eval/<tag>/ (with --step, "
                               "default step<N>).")
MODEL_DIR = absl_flags.DEFINE_string("model_dir", None, "A Hugging Face model directory (default: the config's student).")
STEP = absl_flags.DEFINE_integer("step", None, "Evaluate this training checkpoint step of the config's run "
                                 "(default tag: step<N>).")


def main(argv):
  del argv
  cfg = flags.experiment()
  try:
    benchmarks.load_benchmarks(cfg.eval.benchmarks, cfg.workdir)  # a bad file fails before the model loads
    if cfg.eval.retain_set:
      retain_sets.load_retain_set(cfg.eval.retain_set)
    if STEP.value is not None and MODEL_DIR.value:
      flags.fail("evaluate: --step restores the config's student from its checkpoints; drop --model_dir")
    model = loaded_model.load(MODEL_DIR.value or cfg.student, mesh_lib.make_mesh(cfg.mesh), cfg.model)
    # Another model's results are not this run's: only the config's student (or its checkpoints) is logged.
    tag, result = pipeline.evaluate_model(cfg, model, STEP.value, TAG.value if absl_flags.FLAGS["tag"].present else None,
                                 log_metrics=not MODEL_DIR.value)
  except (records.ProblemFileError, retain_sets.RetainFileError, benchmarks.BenchmarkError, artifacts.ArtifactError,
          loaded_model.ModelNotFoundError, FileNotFoundError) as e:
    flags.fail(f"evaluate: {e}")
  print(evaluate.format_table(result))
  print(f"results: {workspace.eval_dir(cfg.workdir, tag)}")


if __name__ == "__main__":
  flags.run(main)
