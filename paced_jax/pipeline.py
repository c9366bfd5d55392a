"""The main job: prepare -> pass rates -> references + teacher signal -> train -> evaluate -> report.

Each stage skips itself when its outputs are complete and resumes when they are partial, so the
same command finishes a killed pipeline.
"""

from __future__ import annotations

import os
import time

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax.evaluation import evaluate
from paced_jax.model import hf_checkpoint
from paced_jax.model import loaded as loaded_model
from paced_jax.evaluation import pass_rate
from paced_jax.problems import prepare as prepare_lib
from paced_jax.problems import records
from paced_jax.teacher import reference
from paced_jax.analysis import report
from paced_jax.analysis import snr
from paced_jax.teacher import stage as teacher_stage
from paced_jax.training import trainer
from paced_jax.config import ExperimentConfig, to_json


def _banner(i: int, n: int, name: str) -> None:
  print(f"\n=== [{i}/{n}] {name} ===", flush=True)


def run(cfg: ExperimentConfig) -> str:
  """Run every stage of `cfg` in its workspace; returns the report's path."""
  tic = time.time()
  os.makedirs(cfg.workdir, exist_ok=True)
  artifacts.write_json(workspace.config_file(cfg.workdir), to_json(cfg))
  offline = any(trainer.stage_of(cfg, s)[0] == "offline" for s in range(cfg.train.steps))
  stages = ["prepare problems", "load models", "pass rates"] + (["references + teacher signal"] if offline else []) + [
      "evaluate initial student", "train", "evaluate trained student", "report"]
  n = len(stages)
  step = iter(range(1, n + 1))

  _banner(next(step), n, stages[0])
  p = cfg.problems
  fields = records.FieldMap(id=p.field_id or None, prompt=p.field_prompt, answer=p.field_answer,
                             solution=p.field_solution or None)
  prepare_lib.prepare(cfg.workdir, p.source, n_train=p.n_train, n_heldout=p.n_heldout, seed=p.seed, fields=fields)

  _banner(next(step), n, stages[1])
  student, teacher = loaded_model.load_student_and_teacher(cfg)
  mesh = student.mesh
  teacher_stage.check_same_tokenizer(student, teacher)
  print(f"student {student.model_dir} ({student.cfg.num_layers} layers, d={student.cfg.hidden_size}); "
        f"teacher {'= initial student' if teacher is student else teacher.model_dir}; mesh {dict(mesh.shape)}")

  _banner(next(step), n, stages[2])
  pass_rate.run(cfg, student)
  if offline:
    _banner(next(step), n, stages[3])
    reference.run(cfg, teacher)
    teacher_stage.run(cfg, teacher)

  if cfg.run_snr:
    snr.run(cfg, student, teacher, step=-1)  # the initial student; snr.step (if set) after training
  _banner(next(step), n, "evaluate initial student")
  initial = evaluate.evaluate(cfg, student, tag=evaluate.BASELINE_TAG)
  _banner(next(step), n, "train")
  trainer.train(cfg, student, teacher)
  _banner(next(step), n, "evaluate trained student")
  if cfg.run_snr and cfg.snr.step >= 0:
    snr.run(cfg, student, teacher)  # snr/step<N>/
  trained_step, params = trainer.restore_params(cfg, student)
  final = evaluate.evaluate(cfg, student, params=params, tag="final",
                            fingerprint=f"{student.fingerprint}@step{trained_step}")
  export_dir = workspace.export_dir(cfg.workdir)
  if not os.path.exists(os.path.join(export_dir, "config.json")):
    hf_checkpoint.export_hf(params, student.cfg, export_dir, tokenizer_dir=student.model_dir)

  _banner(next(step), n, "report")
  path = report.build_report(cfg.workdir)
  print("\ninitial student:\n" + evaluate.format_table(initial))
  print("\ntrained student (step %d):\n" % trained_step + evaluate.format_table(final))
  print(f"\ntrained model (Hugging Face format): {export_dir}")
  print(f"report: {path}   ({(time.time() - tic) / 60:.1f} min)")
  return path
