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

from paced_jax import workspace
from paced_jax import artifacts, mesh as mesh_lib
from paced_jax.evaluation import benchmarks
from paced_jax.evaluation import evaluate
from paced_jax.model import loaded as loaded_model
from paced_jax.problems import records
from paced_jax.evaluation import retain_sets
from paced_jax.tools import flags
from paced_jax.config import ExperimentConfig
from paced_jax.model.loaded import LoadedModel
from paced_jax.training import checkpoint_select, metrics

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

TAG = absl_flags.DEFINE_string("tag", evaluate.BASELINE_TAG, "Results go to WORKDIR/eval/<tag>/ (with --step, "
                               "default step<N>).")
MODEL_DIR = absl_flags.DEFINE_string("model_dir", None, "A Hugging Face model directory (default: the config's student).")
STEP = absl_flags.DEFINE_integer("step", None, "Evaluate this training checkpoint step of the config's run "
                                 "(default tag: step<N>).")


def evaluate_model(cfg: ExperimentConfig, model: LoadedModel, step: int | None, tag: str | None,
                   log_metrics: bool = True) -> tuple[str, dict]:
  """Evaluate `model` (or checkpoint `step` of cfg's run: None = the model as loaded) -> (tag, result).

  With `log_metrics` the result goes to the run's MetricsWriter (TensorBoard, W&B) at the checkpoint's
  step (0 for the initial student), beside what training logged."""
  params, fingerprint = None, None
  if step is not None:
    step, params = checkpoint_select.restore_kept(cfg, model, step)
    fingerprint = f"{model.fingerprint}@step{step}"  # as the pipeline names its trained state
  tag = tag or (f"step{step}" if step is not None else evaluate.BASELINE_TAG)
  result = evaluate.evaluate(cfg, model, params=params, tag=tag, fingerprint=fingerprint)
  if log_metrics:
    log = metrics.MetricsWriter(cfg.workdir, cfg.wandb)
    try:
      metrics.log_evaluation(log, cfg.workdir, result, step or 0)
    finally:
      log.close()
  return tag, result


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
    tag, result = evaluate_model(cfg, model, STEP.value, TAG.value if absl_flags.FLAGS["tag"].present else None,
                                 log_metrics=not MODEL_DIR.value)
  except (records.ProblemFileError, retain_sets.RetainFileError, benchmarks.BenchmarkError, artifacts.ArtifactError,
          loaded_model.ModelNotFoundError, FileNotFoundError) as e:
    flags.fail(f"evaluate: {e}")
  print(evaluate.format_table(result))
  print(f"results: {workspace.eval_dir(cfg.workdir, tag)}")


if __name__ == "__main__":
  flags.run(main)
