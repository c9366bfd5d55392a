"""The main job: prepare -> pass rates -> references + teacher signal -> train -> evaluate -> report;
and `evaluate_model`, one model or checkpoint evaluated and logged (tools/evaluate).

Each stage skips itself when its outputs are complete and resumes when they are partial, so the
same command finishes a killed pipeline.
"""

from __future__ import annotations

import os
import shutil

import jax

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax import host_memory, progress
from paced_jax.evaluation import evaluate
from paced_jax.model import hf_checkpoint
from paced_jax.model import loaded as loaded_model
from paced_jax.evaluation import pass_rate
from paced_jax.problems import prepare as prepare_lib
from paced_jax.teacher import reference
from paced_jax.analysis import report
from paced_jax.analysis import snr
from paced_jax.teacher import stage as teacher_stage
from paced_jax.training import checkpoint_select, checkpoints
from paced_jax.training import metrics as metrics_lib
from paced_jax.training import trainer
from paced_jax.config import ExperimentConfig
from paced_jax.config_dict import to_json


def _banner(i: int, n: int, name: str, clock: progress.StageClock) -> None:
  host_memory.end_stage()  # the last stage's programs and freed buffers: each stage's peak RSS is then its own
  clock.begin(name)
  print(f"\n=== [{i}/{n}] {name}  ({progress.format_seconds(clock.elapsed())} elapsed) ===", flush=True)


EXPORT_KIND = "export"


def _drop_if_stale(directory: str, kind: str, expected: dict, resumable: bool = False) -> None:
  """Remove an artifact made from another checkpoint (or, unless `resumable`, never finished) to make it again."""
  if not os.path.exists(directory) or (resumable and not os.path.exists(os.path.join(directory, artifacts.MANIFEST))):
    return
  try:
    manifest = artifacts.read_manifest(directory, kind)
    stale = any(manifest.get(k) != v for k, v in expected.items())
  except artifacts.ArtifactError:
    stale = True
  if stale:
    print(f"{directory}: made from another checkpoint; redoing it")
    shutil.rmtree(directory)


def run(cfg: ExperimentConfig) -> str:
  """Run every stage of `cfg` in its workspace; returns the report's path."""
  clock = progress.StageClock()
  try:
    return _run(cfg, clock)
  finally:
    clock.close()


def _run(cfg: ExperimentConfig, clock: progress.StageClock) -> str:
  if jax.process_index() == 0:  # pod workers share the workdir; one lock holder stands for the run
    artifacts.lock_workdir(cfg.workdir)
  trainer.check_resume(cfg)  # checkpoints of other settings are refused before anything is written
  artifacts.write_json(workspace.config_file(cfg.workdir), to_json(cfg))
  offline = trainer.uses_offline(cfg)
  stages = ["prepare problems", "load models", "pass rates"] + (["references + teacher signal"] if offline else []) + [
      "evaluate initial student", "train", "evaluate trained student", "report"]
  n = len(stages)
  step = iter(range(1, n + 1))

  _banner(next(step), n, stages[0], clock)
  p = cfg.problems
  prepare_lib.prepare(cfg.workdir, p.source, n_train=p.n_train, n_heldout=p.n_heldout, seed=p.seed,
                      fields=prepare_lib.field_map(p))

  _banner(next(step), n, stages[1], clock)
  student, teacher = loaded_model.load_student_and_teacher(cfg)
  mesh = student.mesh
  teacher_stage.check_same_tokenizer(student, teacher)
  print(f"student {student.model_dir} ({student.cfg.num_layers} layers, d={student.cfg.hidden_size}); "
        f"teacher {'= initial student' if teacher is student else teacher.model_dir}; mesh {dict(mesh.shape)}")

  _banner(next(step), n, stages[2], clock)
  pass_rate.run(cfg, student)
  if offline:
    _banner(next(step), n, stages[3], clock)
    reference.run(cfg, teacher)
    teacher_stage.run(cfg, teacher)

  if cfg.run_snr:
    snr.run(cfg, student, teacher, step=-1)  # the initial student; snr.step (if set) after training
  _banner(next(step), n, "evaluate initial student", clock)
  initial = evaluate.evaluate(cfg, student, tag=evaluate.BASELINE_TAG)
  log = metrics_lib.MetricsWriter(cfg.workdir, cfg.wandb)  # one run (W&B) for the evaluations and training
  try:
    metrics_lib.log_evaluation(log, cfg.workdir, initial, 0)
    _banner(next(step), n, "train", clock)
    trainer.train(cfg, student, teacher, writer=log)
    _banner(next(step), n, "evaluate trained student", clock)
    trained_step, final, export_dir = _evaluate_trained(cfg, student, teacher)
    metrics_lib.log_evaluation(log, cfg.workdir, final, trained_step)
  finally:
    log.close()
  _banner(next(step), n, "report", clock)
  path = report.build_report(cfg.workdir)
  print("\ninitial student:\n" + evaluate.format_table(initial))
  print("\ntrained student (step %d):\n" % trained_step + evaluate.format_table(final))
  print(f"\ntrained model (Hugging Face format): {export_dir}")
  print(f"\ntime per stage (wall, of which tracing and compiling):\n{clock.summary()}")
  print(f"report: {path}   ({clock.elapsed() / 60:.1f} min)")
  return path


def _evaluate_trained(cfg: ExperimentConfig, student, teacher) -> tuple[int, dict, str]:
  """Evaluate and export the latest checkpoint; returns (its step, the evaluation result, the export directory)."""
  if cfg.run_snr and cfg.snr.step >= 0:
    snr.run(cfg, student, teacher)  # snr/step<N>/
  trained_step, params = trainer.restore_params(cfg, student)
  source = {"step": trained_step, "checkpoint": checkpoints.fingerprint(cfg.workdir, trained_step)}
  fingerprint = f"{student.fingerprint}@step{trained_step}:{source['checkpoint']}"
  final_dir = workspace.eval_dir(cfg.workdir, "final")
  _drop_if_stale(final_dir, evaluate.KIND, {"model_fingerprint": fingerprint}, resumable=True)
  final = evaluate.evaluate(cfg, student, params=params, tag="final", fingerprint=fingerprint)
  export_dir = workspace.export_dir(cfg.workdir)
  _drop_if_stale(export_dir, EXPORT_KIND, source)
  if not os.path.exists(os.path.join(export_dir, artifacts.MANIFEST)):
    hf_checkpoint.export_hf(params, student.cfg, export_dir, tokenizer_dir=student.model_dir)
    artifacts.write_manifest(export_dir, EXPORT_KIND, **source)  # last: marks the export complete
  return trained_step, final, export_dir


def evaluate_model(cfg: ExperimentConfig, model: loaded_model.LoadedModel, step: int | None, tag: str | None,
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
    log = metrics_lib.MetricsWriter(cfg.workdir, cfg.wandb)
    try:
      metrics_lib.log_evaluation(log, cfg.workdir, result, step or 0)
    finally:
      log.close()
  return tag, result
