"""The PACED training loop: data per step, the jitted step, metrics, checkpoints, resume.

Tracks (METHOD.md section 3): `distill` learns from stored teacher references (offline store);
`self_distill` samples on-policy responses every step and has the frozen initial student, given
privileged context, score them; `two_stage` does the first for `stage1_fraction` of the steps with
forward KL, then the second with reverse KL. Checkpoints (orbax) hold the train state; the data
position is the step number, so a resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import signal
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from paced_jax import workspace
from paced_jax import artifacts, host_memory, mesh as mesh_lib, progress as progress_lib
from paced_jax.evaluation import pass_rate
from paced_jax.model import tokenization
from paced_jax.problems import prompts as prompts_lib
from paced_jax.problems.prepare import read_problems
from paced_jax.training import checkpoints
from paced_jax.training import data as training_data
from paced_jax.training import metrics as metrics_lib
from paced_jax.training import train_step as ts
from paced_jax.config import ConfigError, ExperimentConfig
from paced_jax.config_dict import to_json
from paced_jax.model.loaded import LoadedModel
from paced_jax.training.packing import pack
from paced_jax.sampling.sampler import Sampler

def stage_of(cfg: ExperimentConfig, step: int) -> tuple[str, str]:
  """(data source, divergence) of a step: ('offline' | 'on_policy', a registered divergence name)."""
  if cfg.track == "two_stage":
    first = step < int(cfg.train.stage1_fraction * cfg.train.steps)
    # The schedule is forward then reverse KL; any other chosen divergence (AKL, JSD, ...) replaces both.
    kind = cfg.train.loss if cfg.train.loss not in ("fkl", "rkl") else ("fkl" if first else "rkl")
    return ("offline" if first else "on_policy"), kind
  return ("offline" if cfg.track == "distill" else "on_policy"), cfg.train.loss


def step_config(cfg: ExperimentConfig, student: LoadedModel, divergence: str, num_pass_buckets: int) -> ts.StepConfig:
  return ts.step_config(cfg, student.graphdef, divergence=divergence, valid_vocab=student.valid_vocab,
                        num_pass_buckets=num_pass_buckets)


checkpoint_manager = checkpoints.manager


def uses_offline(cfg: ExperimentConfig) -> bool:
  return any(stage_of(cfg, s)[0] == "offline" for s in range(cfg.train.steps))


def check_resume(cfg: ExperimentConfig) -> list[str]:
  """Refuse (CheckpointError) checkpoints made with other settings or inputs; returns the extended fields.

  Writes nothing: the pipeline calls it before its first write."""
  manifest = checkpoints.read(cfg.workdir)
  extended = [] if manifest is None else checkpoints.check_settings(cfg, manifest, uses_offline(cfg))
  if "train.steps" in extended and (cfg.train.schedule != "constant" or cfg.track == "two_stage"):
    # Not refused (continuing is what was asked for), but not what a fresh run of that length would do.
    warnings.warn(f"train.steps extended: the {cfg.train.schedule} schedule / two-stage boundary of the steps already "
                  "taken followed the old length; a fresh run of the new length would differ", stacklevel=2)
  return extended


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _state_and_sharding(cfg: ExperimentConfig, student: LoadedModel, scfg: ts.StepConfig, abstract: bool = False):
  """A fresh train state from the student's weights (or its shapes only) and its shardings."""
  params = nnx.to_pure_dict(student.params)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  if abstract:
    state = jax.eval_shape(lambda p: ts.init_state(p, scfg, cfg.train.seed), params)
  else:
    # The train state owns a copy: its buffers are donated every step, the teacher's must survive.
    state = ts.init_state(jax.tree.map(jnp.copy, params), scfg, cfg.train.seed)
  return state, ts.state_shardings(state, param_shardings, student.mesh, scfg)


def restore_params(cfg: ExperimentConfig, student: LoadedModel, step: int | None = None):
  """(step, trained parameters as a pure dict) of the latest or a given checkpoint."""
  scfg = step_config(cfg, student, "fkl", 2)
  state, sharding = _state_and_sharding(cfg, student, scfg, abstract=True)
  manifest = checkpoints.read(cfg.workdir)
  with checkpoint_manager(cfg.workdir) as mngr:
    if step is None:
      step = checkpoints.restorable_step(cfg.workdir, mngr, manifest)
    elif manifest is None or (bad := checkpoints.damage(cfg.workdir, manifest, step)):
      raise checkpoints.CheckpointError(f"{workspace.checkpoints_dir(cfg.workdir)}: checkpoint {step} is missing or "
                                        f"damaged ({'no manifest' if manifest is None else bad})")
    if step is None:
      raise checkpoints.CheckpointError(f"{workspace.checkpoints_dir(cfg.workdir)}: no checkpoint to restore")
    # The parameters only: the optimizer moments (twice their size) are never read into memory.
    restored = checkpoints.restore(mngr, step, {"params": _abstract(state.params, sharding.params)}, partial=True)
  return step, restored["params"]


def _check_seq_len(cfg: ExperimentConfig, student: LoadedModel, problems) -> None:
  """Refuse rows too short for the longest student prompt plus one response token (they would train on nothing)."""
  length, pid = max((len(prompts_lib.student_prompt(student.tokenizer, p, cfg.prompts)), p.id) for p in problems)
  if length + 1 > cfg.train.seq_len:
    raise ConfigError(f"config.train.seq_len: {cfg.train.seq_len} does not fit the longest student prompt "
                      f"({length} tokens, problem {pid!r}) plus one response token")


class Diverged(artifacts.ArtifactError):
  """Too many non-finite steps in a row: the settings (usually train.lr) do not train this model."""


class _Termination:
  """Turns SIGTERM (a preempted pod, a killed job) into a checkpoint and a clean exit."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _log_start(log: metrics_lib.MetricsWriter, cfg: ExperimentConfig, start: int) -> None:
  """Settings and the round-0 pass-rate histogram (the weights training starts from), at the first step logged."""
  log.hparams(to_json(cfg))
  rates = artifacts.read_manifest(workspace.pass_rates_dir(cfg.workdir, 0), pass_rate.KIND)
  log.histogram("pass_rate/round_0", rates["histogram"], start)


def _log_step(log: metrics_lib.MetricsWriter, record: dict) -> None:
  log.scalars(record["step"], record, prefix="train/", jsonl=True)
  losses, counts = record["bucket_loss"], record["bucket_count"]
  log.scalars(record["step"], {f"correct_{b}_of_{len(losses) - 1}": v for b, v in enumerate(losses) if counts[b]},
              prefix="bucket_loss/")


def train(cfg: ExperimentConfig, student: LoadedModel, teacher: LoadedModel, *, progress: bool = True,
          writer: metrics_lib.MetricsWriter | None = None) -> int:
  """Run (or resume) training to `cfg.train.steps` (a one-pass run: or until its walk runs out); returns the final
  step. Raises SystemExit(143) on SIGTERM.

  `writer` (the caller's, left open) or else a writer of its own, closed at the end."""
  t = cfg.train
  mesh = student.mesh
  extended = check_resume(cfg)
  if extended:
    print(f"continuing training with {', '.join(f'{k} = {v}' for k, v in ((k, _get(cfg, k)) for k in extended))}")
  # A one-pass run starts at round 0 (its walk from the start); the round of a resumed step comes below.
  data = training_data.weighted_problems(cfg, 0 if t.one_pass else None)
  drawn: frozenset[str] = frozenset()
  if t.one_pass and data.steps_left(t.batch_size) == 0:
    raise ValueError(f"{data.round_dir}: one pass over {len(data.problems)} kept problems has no full batch of "
                     f"{t.batch_size} (config.train.pool / batch_size)")
  _check_seq_len(cfg, student, data.problems)
  print(f"training on {data.summary()}")
  # Over every training problem (a later pass-rate round may keep others): one compile for every step.
  lengths = training_data.on_policy_lengths(read_problems(cfg.workdir, "train"), student.tokenizer, cfg)
  stages = {stage_of(cfg, s) for s in range(t.steps)}
  steps = {div: step_config(cfg, student, div, data.K + 1) for _, div in stages}
  state, sharding = _state_and_sharding(cfg, student, next(iter(steps.values())))
  state = jax.device_put(state, sharding)
  jitted = {div: ts.jit_train_step(scfg, sharding, mesh) for div, scfg in steps.items()}
  batch_sharding = ts.Batch.shardings(mesh)

  mngr = checkpoint_manager(cfg.workdir, state)
  start = checkpoints.restorable_step(cfg.workdir, mngr, checkpoints.read(cfg.workdir)) or 0
  checkpoints.set_aside_newer(cfg.workdir, mngr, start)
  every = cfg.pass_rate.recompute_every
  if t.one_pass and start and every:
    # Round r is the recompute at step r x every: a resumed run takes the round its start step had
    # (one written after the last checkpoint is reused when the run gets there again).
    data, drawn = training_data.one_pass_walk(cfg, min(pass_rate.latest_round(cfg.workdir), start // every))
  if start:
    state = ts.TrainState(**checkpoints.restore(mngr, start, _abstract(state._asdict(), sharding._asdict())))
    print(f"resumed from checkpoint at step {start}")
  offline = training_data.load_offline(cfg, teacher) if any(src == "offline" for src, _ in stages) else None
  teacher_params = teacher.params  # frozen: the initial student in self-distillation
  log = writer if writer is not None else metrics_lib.MetricsWriter(cfg.workdir, cfg.wandb)
  if not log.open_train_log(start):  # a run that began here before (even one killed before its first checkpoint)
    _log_start(log, cfg, start)     # logged them when it began
  term = _Termination()
  rows = t.rows_per_step or t.batch_size
  pad = tokenization.pad_id(student.tokenizer)
  bar = progress_lib.bar(total=t.steps, initial=start, desc="train", unit="step",
                         disable=not progress or jax.process_index() > 0)
  skipped_in_a_row = 0
  done = start
  try:
    for s in range(start, t.steps):
      if t.one_pass and s >= data.steps_left(t.batch_size):
        print(f"one pass: no full batch of unseen kept problems left; training ends at step {s} of {t.steps}")
        break
      # Freed heap stays resident (glibc): the last step's temporaries and the checkpoint writer's buffers
      # before sampling allocates, sampling's and scoring's before the step's (issue 17).
      host_memory.release_free()
      tic = time.perf_counter()
      source, div = stage_of(cfg, s)
      problems = data.batch(s, t.batch_size, t.seed)
      generated = 0
      if source == "offline":
        examples = training_data.offline_examples(problems, data, *offline, student.tokenizer, cfg)
      else:
        sampler = Sampler.for_model(student, state.params)
        examples, generated = training_data.on_policy_examples(problems, data, sampler, teacher, teacher_params, s, cfg,
                                                               lengths)
        del sampler  # its decoding copy of the weights: freed before the step, not when the next one replaces it
      batch_np, dropped = pack(examples, rows, t.seq_len, cfg.teacher_signal.top_k, pad_id=pad)
      batch = jax.tree.map(mesh_lib.from_host, batch_np, batch_sharding)
      host_memory.release_free()
      state, metrics = jitted[div](state, batch)
      m = jax.device_get(metrics)
      seconds = time.perf_counter() - tic
      record = {"step": s + 1, "stage": source, "divergence": div, "seconds": seconds,
                "tokens_per_s": float(m["tokens"]) / seconds, "dropped_sequences": dropped,
                "generated_tokens": generated, "lr": float(ts.learning_rate(steps[div])(s)), **_plain(m)}
      _log_step(log, record)
      skipped_in_a_row = skipped_in_a_row + 1 if record["skipped"] else 0
      if skipped_in_a_row:
        warnings.warn(f"step {s + 1}: non-finite loss or gradients (or no weight in the batch); update skipped "
                      f"({skipped_in_a_row} in a row)", stacklevel=1)
      if skipped_in_a_row >= t.max_skipped_in_a_row:
        raise Diverged(f"training diverged: {skipped_in_a_row} updates in a row skipped up to step {s + 1} "
                       f"(train.max_skipped_in_a_row = {t.max_skipped_in_a_row}); lower train.lr (now {t.lr}) "
                       "and resume from the last checkpoint")
      bar.update(1)
      bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", stage=source)
      done = s + 1
      last = done == t.steps or (t.one_pass and done >= data.steps_left(t.batch_size))
      if done % t.checkpoint_every == 0 or last or term.requested:
        mngr.save(done, args=ocp.args.StandardSave(state._asdict()), force=True)
        mngr.wait_until_finished()
        if jax.process_index() == 0:
          checkpoints.record_save(cfg, mngr, done, uses_offline(cfg))
      if term.requested:
        print(f"SIGTERM: checkpoint saved at step {done}; rerun the same command to resume")
        raise SystemExit(143)
      if every and done % every == 0 and done < t.steps:
        r = done // every if t.one_pass else pass_rate.latest_round(cfg.workdir) + 1
        fingerprint = f"{student.fingerprint}@step{done}"
        if t.one_pass:  # only what the walk can still draw
          pass_rate.run(cfg, student, round_=r, params=state.params, fingerprint=fingerprint,
                        problems=training_data.undrawn(cfg, data, drawn, done))
          data, drawn = training_data.one_pass_walk(cfg, r)
        else:
          pass_rate.run(cfg, student, round_=r, params=state.params, fingerprint=fingerprint)
          data = training_data.weighted_problems(cfg, r)
  finally:
    bar.close()
    log.close_train_log()
    if writer is None:
      log.close()
    term.restore()
    mngr.close()
  return done


def _get(cfg, dotted: str):
  for name in dotted.split("."):
    cfg = getattr(cfg, name)
  return cfg


def _plain(metrics: dict) -> dict:
  return {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in metrics.items()}
