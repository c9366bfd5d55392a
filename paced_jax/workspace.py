"""Every path in a workspace (WORKSPACE.md documents the layout); no stage types a folder name itself.

A pipeline workspace is one directory, WORKDIR; the method lab's directory holds several of them
(a shared one and one per run) next to its models.
"""

from __future__ import annotations

import os


def config_file(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def problems_dir(workdir: str) -> str:
  return os.path.join(workdir, "problems")


def pass_rates_root(workdir: str) -> str:
  return os.path.join(workdir, "pass_rates")


def pass_rates_dir(workdir: str, round_: int) -> str:
  """Round 0: the initial student; later rounds: recomputations during training."""
  return os.path.join(pass_rates_root(workdir), f"{round_:04d}")


def references_dir(workdir: str) -> str:
  return os.path.join(workdir, "references")


def teacher_dir(workdir: str) -> str:
  return os.path.join(workdir, "teacher")


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def damaged_checkpoints_dir(workdir: str) -> str:
  """Checkpoints that failed verification, kept for inspection when training continues from an older one."""
  return os.path.join(workdir, "checkpoints.damaged")


def metrics_dir(workdir: str) -> str:
  return os.path.join(workdir, "metrics")


def train_metrics_file(workdir: str) -> str:
  return os.path.join(metrics_dir(workdir), "train.jsonl")


def tensorboard_dir(workdir: str) -> str:
  return os.path.join(metrics_dir(workdir), "tensorboard")


def wandb_run_file(workdir: str) -> str:
  """The W&B run id of this workspace: a resumed or later stage continues that run."""
  return os.path.join(metrics_dir(workdir), "wandb_run.json")


def eval_root(workdir: str) -> str:
  return os.path.join(workdir, "eval")


def eval_dir(workdir: str, tag: str) -> str:
  return os.path.join(eval_root(workdir), tag)


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, "export")


def step_export_dir(workdir: str, step: int, dtype: str) -> str:
  """Where tools/export writes one checkpoint step (the pipeline's own export is export_dir)."""
  return os.path.join(workdir, "exports", f"step{step}-{dtype}")


def snr_root(workdir: str) -> str:
  return os.path.join(workdir, "snr")


def snr_dir(workdir: str, tag: str) -> str:
  return os.path.join(snr_root(workdir), tag)


def report_dir(workdir: str) -> str:
  return os.path.join(workdir, "report")


# The method lab's directory.
def lab_shared_dir(lab_dir: str) -> str:
  """The pipeline workspace every run shares: problems, initial pass rates, references, teacher store."""
  return os.path.join(lab_dir, "shared")


def lab_models_dir(lab_dir: str) -> str:
  return os.path.join(lab_dir, "models")


def lab_runs_root(lab_dir: str) -> str:
  return os.path.join(lab_dir, "runs")


def lab_run_dir(lab_dir: str, track: str, method: str, seed: int) -> str:
  return os.path.join(lab_runs_root(lab_dir), track, method, f"seed{seed}")


def lab_report_dir(lab_dir: str) -> str:
  return report_dir(lab_dir)
