"""One metrics writer for every stage: metrics/train.jsonl, TensorBoard and (when configured) Weights & Biases.

Only process 0 writes: the workspace is shared, and a second writer's rewrite of train.jsonl would
orphan process 0's open file. The jsonl backend holds the train records only (one line per step,
as before); TensorBoard and W&B also get eval results, histograms, hyperparameters and texts.
"""

from __future__ import annotations

import json
import os
import secrets

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2

from paced_jax import artifacts, workspace
from paced_jax.config import WandbConfig
from paced_jax.evaluation import evaluate

EVAL_STEP = "eval/checkpoint_step"  # W&B's x-axis of eval/ and samples/ (the evaluated checkpoint's step)
SAMPLE_RESPONSES = 4  # per benchmark and evaluation: enough to eyeball, small enough to scroll


def _flatten(tree, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


def _number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _wandb_run_id(workdir: str, wandb: WandbConfig) -> str:
  """The workspace's W&B run id (metrics/wandb_run.json), made and written before the first init: a killed
  run that resumes, and the stages after it, continue the same W&B run. Another project or entity starts
  a new run (and the file then names it)."""
  path, where = workspace.wandb_run_file(workdir), {"project": wandb.project, "entity": wandb.entity}
  if os.path.exists(path):
    stored = artifacts.read_json(path)
    if isinstance(stored, dict) and {k: stored.get(k) for k in where} == where and stored.get("id"):
      return stored["id"]
  run_id = secrets.token_hex(8)  # W&B ids are [a-z0-9]; 64 random bits never collide within a project
  artifacts.write_json(path, {"id": run_id, **where})
  return run_id


class MetricsWriter:
  """scalars / histogram / hparams / texts to every enabled backend; a no-op off process 0."""

  def __init__(self, workdir: str, wandb: WandbConfig = WandbConfig()):
    self.workdir = workdir
    self.file = self.tb = self.run = None
    if jax.process_index() != 0:
      return
    os.makedirs(workspace.metrics_dir(workdir), exist_ok=True)
    # tensorboardX names a file by the second and host only, and a second writer that second would truncate it.
    self.tb = SummaryWriter(workspace.tensorboard_dir(workdir), filename_suffix=f".{secrets.token_hex(4)}")
    if wandb.project and wandb.mode != "disabled":
      import wandb as wandb_lib  # the optional `wandb` extra: imported only when asked for
      run_dir = wandb.dir or os.environ.get("WANDB_DIR") or workspace.metrics_dir(workdir)
      os.makedirs(run_dir, exist_ok=True)
      self.run = wandb_lib.init(project=wandb.project, entity=wandb.entity or None, name=wandb.name or None,
                                mode=wandb.mode, dir=run_dir, reinit="create_new",
                                id=_wandb_run_id(workdir, wandb), resume="allow")
      # Evaluations of a chosen checkpoint come after training has logged later steps, and W&B drops a
      # `step=` below the run's last; so eval/ and samples/ are drawn over their own checkpoint-step axis.
      self.run.define_metric(EVAL_STEP, hidden=True)
      for prefix in ("eval/*", "samples/*"):
        self.run.define_metric(prefix, step_metric=EVAL_STEP)
      self._wandb = wandb_lib

  @property
  def active(self) -> bool:
    return self.tb is not None

  def open_train_log(self, start_step: int) -> bool:
    """Open metrics/train.jsonl for appending, first dropping lines past `start_step` (a resume); and tell
    TensorBoard to hide what an earlier, killed run logged past it (its purge: events of a step >= the
    SessionLog.START's, read before it). A resumed online W&B run ignores a step below its last (W&B's
    rule), so a redone step keeps the killed run's value there. Returns whether the log was there (a run in
    this workdir began before, and logged its start); False off process 0."""
    if self.tb is None:
      return False
    self.tb._get_file_writer().add_event(
        event_pb2.Event(step=start_step + 1, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    path = workspace.train_metrics_file(self.workdir)
    kept, existed = [], os.path.exists(path)
    if existed:  # a kill may have cut the last line short
      kept = [r for r in artifacts.read_jsonl_lines(path, drop_torn_tail=True) if r["step"] <= start_step]
    with artifacts.atomic_open(path) as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    self.file = open(path, "a")
    return existed

  def scalars(self, step: int, values: dict, *, prefix: str = "", jsonl: bool = False) -> None:
    """The numbers of `values` as `prefix + key`; with `jsonl`, the whole record as one train.jsonl line."""
    if self.tb is None:
      return
    if jsonl and self.file is not None:
      self.file.write(json.dumps({"step": step, **{k: v for k, v in values.items() if k != "step"}}) + "\n")
      self.file.flush()
    numbers = {f"{prefix}{k}": float(v) for k, v in values.items() if _number(v) and k != "step"}
    for tag, v in numbers.items():
      self.tb.add_scalar(tag, v, step)
    if self.run is not None and numbers:
      self._wandb_log(numbers, step)

  def histogram(self, name: str, counts, step: int) -> None:
    """Counts of the A = R + 1 pass-rate buckets (c correct of R), drawn over p = c / R."""
    if self.tb is None:
      return
    counts_A = np.asarray(counts, dtype=np.float64)
    R = len(counts_A) - 1
    centers_A = np.arange(R + 1) / max(R, 1)
    half = 0.5 / max(R, 1)
    self.tb.add_histogram_raw(name, min=0.0, max=1.0, num=int(counts_A.sum()), sum=float(counts_A @ centers_A),
                              sum_squares=float(counts_A @ centers_A ** 2), bucket_limits=(centers_A + half).tolist(),
                              bucket_counts=counts_A.tolist(), global_step=step)
    if self.run is not None:
      edges = np.concatenate([centers_A - half, centers_A[-1:] + half])
      self._wandb_log({name: self._wandb.Histogram(np_histogram=(counts_A, edges))}, step)

  def hparams(self, config_json: dict) -> None:
    """The run's settings (a nested JSON dict), flattened to dotted names."""
    if self.tb is None:
      return
    flat = _flatten(config_json)
    table = "\n".join(f"| {k} | `{json.dumps(v)}` |" for k, v in flat.items())
    self.tb.add_text("hparams", "| setting | value |\n|---|---|\n" + table, 0)
    if self.run is not None:
      self.run.config.update(flat, allow_val_change=True)

  def texts(self, name: str, texts: list[str], step: int) -> None:
    if self.tb is None:
      return
    # Markdown would reflow the responses; a fenced block keeps them as the model wrote them.
    self.tb.add_text(name, "\n\n".join(f"```\n{t}\n```" for t in texts), step)
    if self.run is not None:
      self._wandb_log({name: self._wandb.Table(columns=["i", "text"], data=[[i, t] for i, t in enumerate(texts)])},
                      step)

  def _wandb_log(self, values: dict, step: int) -> None:
    if all(k.startswith(("eval/", "samples/")) for k in values):
      self.run.log({**values, EVAL_STEP: step})  # on the run's own step counter, drawn over EVAL_STEP
    else:
      self.run.log(values, step=step)

  def close_train_log(self) -> None:
    if self.file:
      self.file.close()
      self.file = None

  def close(self) -> None:
    self.close_train_log()
    if self.tb:
      self.tb.close()
      self.tb = None
    if self.run is not None:
      self.run.finish()
      self.run = None


def log_evaluation(log: MetricsWriter, workdir: str, result: dict, step: int) -> None:
  """An evaluate.evaluate() result at `step`: per benchmark mean@k and SE (one curve over evaluations), the
  retain accuracy, and the first responses with their verdicts; only what is `new` (a reused result was
  logged when it was made: logged again, TensorBoard and W&B would draw a second point at its step)."""
  if not log.active:
    return
  for name, s in result["benchmarks"].items():
    if name not in result["new"]:
      continue
    log.scalars(step, {k: s[k] for k in ("accuracy", "se", "greedy_pass1") if s.get(k) is not None},
                prefix=f"eval/{name}/")
    records = evaluate.read_responses(evaluate.responses_file(workspace.eval_dir(workdir, result["tag"]), name))
    log.texts(f"samples/{name}", [f"{r['id']} (answer {r['truth']}; {'correct' if r['verdicts'][0] else 'wrong'}, "
                                  f"extracted {r['extracted'][0]}):\n{r['responses'][0]}"
                                  for r in records[:SAMPLE_RESPONSES]], step)
  retain = result.get("retain")
  if retain and "retain" in result["new"] and retain.get("accuracy") is not None:
    log.scalars(step, {"accuracy": retain["accuracy"]}, prefix=f"eval/retain_{retain['retain_set']}/")
