"""Checkpoints that know what made them: settings, input checksums, and a sha256 of every file.

`checkpoints/manifest.json` holds the training-relevant settings (the config minus NOT_TRAINING),
the checksums of the manifests of the inputs (problems, pass-rate round 0, references and teacher
store when used) and, per kept step, the sha256 of every file orbax wrote. A resumed run must
match the settings except the fields of EXTENDABLE; a restore verifies the files and falls back
to the newest intact step.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from paced_jax import artifacts, workspace
from paced_jax.config import ExperimentConfig
from paced_jax.config_dict import to_json

KIND = "checkpoints"
# Settings that do not change the parameters a step produces.
NOT_TRAINING = ("workdir", "eval", "snr", "run_snr", "mesh", "train.checkpoint_every", "train.max_skipped_in_a_row",
               "wandb")
# Settings a resumed run may change, and in which direction: training continues, later stages re-run.
EXTENDABLE = {"train.steps": "up"}


class CheckpointError(artifacts.ArtifactError):
  """Checkpoints are missing, damaged, foreign, or were made with other settings."""


# On CPU, in-flight save bytes at most max(twice the largest array, this): orbax stages a host copy of every
# array it writes concurrently (96 GB allowed by default), and there device memory is the same host RAM.
# Twice: orbax refuses an array larger than its limit, and GB -> bytes in floats can round below one array.
CPU_SAVE_FLOOR_BYTES = 256 * 2**20


def manager(workdir: str, state: Any = None) -> ocp.CheckpointManager:
  """The run's orbax manager; `state` (the tree it will save) bounds a CPU save's staging copies, which
  raised the demo's peak RSS by 1.0 GiB at every save of its 1.5 GiB train state (issue 17)."""
  handler = None
  if state is not None and jax.default_backend() == "cpu":
    in_flight = max([CPU_SAVE_FLOOR_BYTES] + [2 * x.nbytes for x in jax.tree.leaves(state)])
    handler = ocp.StandardCheckpointHandler(save_concurrent_gb=in_flight / 1e9)  # GB: orbax's unit
  return ocp.CheckpointManager(os.path.abspath(workspace.checkpoints_dir(workdir)), item_handlers=handler,
                               options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))


def _flatten(tree: Any, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def settings(cfg: ExperimentConfig) -> dict:
  """The training-relevant settings, as dotted field -> JSON value."""
  flat = _flatten(artifacts.normal_json(to_json(cfg)))
  return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_TRAINING)}


def inputs(cfg: ExperimentConfig, offline: bool) -> dict:
  """sha256 of the manifests of the artifacts training reads (each manifest holds its files' checksums)."""
  dirs = {"problems": workspace.problems_dir(cfg.workdir), "pass_rates": workspace.pass_rates_dir(cfg.workdir, 0)}
  if offline:
    dirs.update(references=workspace.references_dir(cfg.workdir), teacher=workspace.teacher_dir(cfg.workdir))
  out = {}
  for name, d in dirs.items():
    path = os.path.join(d, artifacts.MANIFEST)
    if os.path.exists(path):
      out[name] = artifacts.sha256_file(path)
  return out


def _manifest_path(workdir: str) -> str:
  return os.path.join(workspace.checkpoints_dir(workdir), artifacts.MANIFEST)


def read(workdir: str) -> dict | None:
  """The manifest, None when there are no checkpoints; refuses step directories without one."""
  directory = workspace.checkpoints_dir(workdir)
  steps = [n for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
  if not os.path.exists(_manifest_path(workdir)):
    if steps:
      raise CheckpointError(f"{directory}: checkpoints without {artifacts.MANIFEST} (made by another program or an "
                            "older paced_jax); delete the directory or point workdir elsewhere")
    return None
  return artifacts.read_manifest(directory, KIND)


def check_settings(cfg: ExperimentConfig, manifest: dict, offline: bool) -> list[str]:
  """Refuse a run whose settings or inputs differ from the checkpoints'; returns the extended fields."""
  path = _manifest_path(cfg.workdir)
  have, want = manifest["settings"], settings(cfg)
  extended = []
  for key in sorted(set(have) | set(want)):
    old, new = have.get(key), want.get(key)
    if old == new:
      continue
    if EXTENDABLE.get(key) == "up" and isinstance(old, int) and isinstance(new, int) and new > old:
      extended.append(key)
      continue
    raise CheckpointError(f"{path}: field {key!r} is {old!r} but this run has {new!r}; the checkpoints were trained "
                          "with other settings (use another workdir, or delete checkpoints/ to retrain)")
  for name, sha in inputs(cfg, offline).items():
    if manifest["inputs"].get(name) not in (None, sha):
      raise CheckpointError(f"{path}: input {name!r} has changed since the checkpoints were made "
                            f"(manifest sha256 {manifest['inputs'][name][:12]} vs {sha[:12]} now)")
  return extended


def _step_files(workdir: str, step: int) -> dict:
  root = os.path.join(workspace.checkpoints_dir(workdir), str(step))
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      path = os.path.join(d, n)
      out[os.path.relpath(path, root)] = artifacts.sha256_file(path)
  return out


def record_save(cfg: ExperimentConfig, mngr: ocp.CheckpointManager, step: int, offline: bool) -> None:
  """After a completed save: checksum the new step's files, forget deleted steps, rewrite the manifest."""
  # train() refused foreign checkpoints at its start; the first save has no manifest yet.
  exists = os.path.exists(_manifest_path(cfg.workdir))
  previous = artifacts.read_manifest(workspace.checkpoints_dir(cfg.workdir), KIND) if exists else {"steps": {}}
  kept = {str(s) for s in mngr.all_steps()}
  steps = {s: files for s, files in previous["steps"].items() if s in kept}
  steps[str(step)] = _step_files(cfg.workdir, step)
  artifacts.write_manifest(workspace.checkpoints_dir(cfg.workdir), KIND, settings=settings(cfg),
                           inputs=inputs(cfg, offline), steps=steps)


def fingerprint(workdir: str, step: int) -> str:
  """A short hash of a step's file checksums: what an export or evaluation records as its source."""
  manifest = read(workdir)
  return artifacts.fingerprint(manifest["steps"][str(step)]) if manifest else "unverified"


def damage(workdir: str, manifest: dict, step: int) -> str | None:
  """The first file of `step` that is missing, extra or altered, or None when the step is intact."""
  want = manifest["steps"].get(str(step))
  if want is None:
    return f"{step}/ (no checksums: the run stopped during the save)"
  have = _step_files(workdir, step)
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      return f"{step}/{name}"
  return None


def restorable_step(workdir: str, mngr: ocp.CheckpointManager, manifest: dict | None) -> int | None:
  """The newest intact step (warning about each damaged newer one), None when there are none at all."""
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None
  if manifest is None:
    raise CheckpointError(f"{workspace.checkpoints_dir(workdir)}: no {artifacts.MANIFEST}")
  for step in steps:
    bad = damage(workdir, manifest, step)
    if bad is None:
      return step
    warnings.warn(f"checkpoint {workspace.checkpoints_dir(workdir)}/{bad} is damaged; falling back to an older step",
                  stacklevel=2)
  raise CheckpointError(f"{workspace.checkpoints_dir(workdir)}: every checkpoint is damaged (newest: "
                        f"{damage(workdir, manifest, steps[0])}); delete the directory to retrain")


def set_aside_newer(workdir: str, mngr: ocp.CheckpointManager, step: int) -> None:
  """Move the (damaged) steps newer than `step` out of checkpoints/, so that training can save them again.

  Process 0 moves them; every process waits for it, then forgets them."""
  newer = [s for s in mngr.all_steps() if s > step]
  if not newer:
    return
  if jax.process_index() == 0:
    for s in newer:
      target = os.path.join(workspace.damaged_checkpoints_dir(workdir), f"{s}-{int(time.time())}")
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.rename(os.path.join(workspace.checkpoints_dir(workdir), str(s)), target)
      warnings.warn(f"damaged checkpoint {s} moved to {target}", stacklevel=2)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("paced_jax.checkpoints.set_aside_newer")
  mngr.reload()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, partial: bool = False) -> Any:
  """Restore a verified step; orbax's structure errors become one line naming the directory. `partial`:
  `abstract_state` names a part of the saved tree (e.g. the parameters alone), and only that part is read."""
  try:
    if partial:
      return mngr.restore(step, args=ocp.args.PyTreeRestore(
          abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state), partial_restore=True))
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except (ValueError, KeyError, FileNotFoundError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"{mngr.directory}/{step}: not a checkpoint of this model's train state ({first})") from None
