"""The `prepare` stage: a problem source (a file, a glob of shards, a datasets directory) or a built-in
generator -> WORKDIR/problems/{train,heldout}.jsonl (one Problem per line) + manifest (DESIGN.md section 1); and reading them back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Any

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax.problems import builtin, sources
from paced_jax.config import ConfigError, ProblemsConfig
from paced_jax.problems.records import FIELD_PRESETS, SPLITS, FieldMap, Problem, ProblemFileError, load_problem_file

KIND = "problems"


def field_map(p: ProblemsConfig) -> FieldMap:
  """The columns config.problems names: its `fields` layout with the field_* settings changed from their
  defaults on top, or (no layout) the field_* settings."""
  own = {"id": p.field_id or None, "prompt": p.field_prompt, "answer": p.field_answer,
         "solution": p.field_solution or None}
  if not p.fields:
    return FieldMap(**own)
  if p.fields not in FIELD_PRESETS:
    raise ConfigError(f"config.problems.fields is {p.fields!r}; expected one of {', '.join(FIELD_PRESETS)}")
  default = ProblemsConfig()
  changed = {k: v for k, v in own.items() if getattr(p, f"field_{k}") != getattr(default, f"field_{k}")}
  return dataclasses.replace(FIELD_PRESETS[p.fields], **changed)


def _config(source: str, n_train: int | None, n_heldout: int, seed: int, fields: FieldMap) -> dict:
  config: dict[str, Any] = {"n_train": n_train, "n_heldout": n_heldout, "seed": seed}
  if source.startswith(builtin.PREFIX):
    name = source[len(builtin.PREFIX):]
    builtin.check_name(name)
    if n_train is None:
      raise ValueError(f"{source}: n_train is required for a built-in source")
    config.update(source=source, generator=builtin.settings(name))
  else:
    # Identified by content, file by file: a moved copy is accepted, and an edited, added or lost
    # file of a glob or dataset directory is refused by name (_check_files).
    config.update(source="file:" + os.path.basename(source.rstrip("/")), files=sources.file_digests(source),
                  fields=dataclasses.asdict(fields))
  return json.loads(json.dumps(config))  # tuples become lists, as they will read back from JSON


def _splits(source: str, n_train: int | None, n_heldout: int, seed: int,
            fields: FieldMap) -> dict[str, list[Problem]]:
  if source.startswith(builtin.PREFIX):
    name = source[len(builtin.PREFIX):]
    return {"train": builtin.generate(name, n_train, seed, "train"),
            "heldout": builtin.generate(name, n_heldout, seed, "heldout")}
  problems = load_problem_file(source, fields)
  if not problems:
    raise ProblemFileError(f"{source}: no problems in the source")
  want = n_heldout + (n_train if n_train is not None else 0)
  if want > len(problems):
    raise ValueError(f"{source}: has {len(problems)} problems, fewer than n_heldout={n_heldout} "
                     f"+ n_train={n_train}")
  order = list(range(len(problems)))
  random.Random(seed).shuffle(order)
  heldout = sorted(order[:n_heldout])  # keep file order inside each split
  train = sorted(order[n_heldout:] if n_train is None else order[n_heldout:n_heldout + n_train])
  return {"train": [problems[i] for i in train], "heldout": [problems[i] for i in heldout]}


def _check_files(manifest_path: str, directory: str, prepared: Any, now: dict[str, str] | None) -> None:
  """Name the first data file whose content differs from what the directory was prepared from."""
  if not isinstance(prepared, dict) or now is None:
    return  # a built-in source on either side, or an older manifest: expect_fields names the difference
  for name in sorted(prepared.keys() | now.keys()):
    if prepared.get(name) != now.get(name):
      what = ("is new" if name not in prepared else "is gone" if name not in now else
              f"has sha256 {now[name]}, not the {prepared[name]} it was prepared from")
      raise artifacts.ArtifactError(f"{manifest_path}: the source changed: {name} {what} "
                                    f"(delete {directory} to prepare it again)")


def _verify(directory: str, manifest: dict, splits: tuple[str, ...]) -> None:
  checksums = manifest.get("checksums") or {}
  for split in splits:
    name = split + ".jsonl"
    path = os.path.join(directory, name)
    want = checksums.get(name)
    got = artifacts.sha256_file(path) if os.path.exists(path) else "missing"
    if got != want:
      raise artifacts.ArtifactError(
          f"{path}: sha256 is {got} but the manifest says {want}; the file was changed or lost "
          f"(delete {directory} to prepare it again)")


def prepare(workdir: str, source: str, *, n_train: int | None = None, n_heldout: int = 0, seed: int = 0,
            fields: FieldMap = FieldMap()) -> str:
  """Write WORKDIR/problems/ and return its path.

  `source` is `builtin:<name>` (a key of BUILTIN_SOURCES; `n_train` required) or a .jsonl / .json /
  .parquet file, a glob of them or a datasets directory (problems/sources.py), read with `fields`,
  shuffled with `seed` and split into `n_heldout` held-out and `n_train` (None: all the rest)
  training problems. A complete directory prepared with the same config and the same data file
  contents is reused as it is; otherwise it is refused (ArtifactError naming the setting or file).
  """
  if n_heldout < 0 or (n_train is not None and n_train < 0):
    raise ValueError(f"counts must be >= 0, got n_train={n_train} n_heldout={n_heldout}")
  directory = workspace.problems_dir(workdir)
  config = _config(source, n_train, n_heldout, seed, fields)
  manifest_path = os.path.join(directory, artifacts.MANIFEST)
  if os.path.exists(manifest_path):
    manifest = artifacts.read_manifest(directory, KIND)
    if isinstance(manifest.get("config"), dict):
      _check_files(manifest_path, directory, manifest["config"].get("files"), config.get("files"))
      artifacts.expect_fields(manifest_path, manifest["config"], config)  # names the setting that differs
    artifacts.expect_fields(manifest_path, manifest, {"config": config})
    _verify(directory, manifest, SPLITS)
    return directory

  splits = _splits(source, n_train, n_heldout, seed, fields)
  os.makedirs(directory, exist_ok=True)
  artifacts.remove_stale_temporaries(directory)  # a killed run's, never a live process's
  checksums = {}
  for split, problems in splits.items():
    path = os.path.join(directory, split + ".jsonl")
    with artifacts.atomic_open(path, "wb") as f:
      for problem in problems:
        f.write(_encode(problem))
    checksums[split + ".jsonl"] = artifacts.sha256_file(path)
  # The manifest goes last: its presence is what marks the directory complete.
  artifacts.write_manifest(directory, KIND, source=source, counts={s: len(p) for s, p in splits.items()},
                           checksums=checksums, config=config)
  return directory


def _encode(problem: Problem) -> bytes:
  return (json.dumps(dataclasses.asdict(problem), ensure_ascii=False, sort_keys=True) + "\n").encode()


def read_problems(workdir: str, split: str) -> list[Problem]:
  """The problems of one split of WORKDIR/problems/, after checking the manifest and checksum."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  directory = workspace.problems_dir(workdir)
  manifest = artifacts.read_manifest(directory, KIND)
  _verify(directory, manifest, (split,))
  with open(os.path.join(directory, split + ".jsonl"), encoding="utf-8") as f:
    return [Problem(**json.loads(line)) for line in f if line.strip()]
