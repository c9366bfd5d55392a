"""Evaluate a model on the config's benchmarks (mean@k) and retain set -> WORKDIR/eval/<tag>/.

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
from paced_jax.training import checkpoint_select

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

TAG = absl_flags.DEFINE_string("tag", evaluate.BASELINE_TAG, "Results go to WORKDIR/eval/<tag>/.")
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
    tag, params, fingerprint = TAG.value, None, None
    if STEP.value is not None:
      step, params = checkpoint_select.restore_kept(cfg, model, STEP.value)
      tag = TAG.value if absl_flags.FLAGS["tag"].present else f"step{step}"
      fingerprint = f"{model.fingerprint}@step{step}"  # as the pipeline names its trained state
    result = evaluate.evaluate(cfg, model, params=params, tag=tag, fingerprint=fingerprint)
  except (records.ProblemFileError, retain_sets.RetainFileError, benchmarks.BenchmarkError, artifacts.ArtifactError,
          loaded_model.ModelNotFoundError, FileNotFoundError) as e:
    flags.fail(f"evaluate: {e}")
  print(evaluate.format_table(result))
  print(f"results: {workspace.eval_dir(cfg.workdir, tag)}")


if __name__ == "__main__":
  flags.run(main)
