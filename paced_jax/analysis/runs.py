"""What the report reads from one run's workdir: its config, training metrics, evaluations and retain results."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any

from paced_jax import artifacts, workspace

BASE_TAG, FINAL_TAG = "initial", "final"
MISSING = "–"


@dataclasses.dataclass
class Run:
  workdir: str
  name: str
  config: dict | None
  metrics: list[dict] | None
  evals: dict[str, dict[str, dict]]   # tag -> benchmark -> summary, tags in report order
  retain: dict[str, dict]             # tag -> retain.json


def _read_json(path: str) -> Any:
  try:
    return artifacts.read_json(path)
  except artifacts.ArtifactError:
    return None


def _get(tree: dict | None, dotted: str, default: Any = MISSING) -> Any:
  for key in dotted.split("."):
    if not isinstance(tree, dict) or key not in tree:
      return default
    tree = tree[key]
  return tree


def _tag_key(tag: str):
  order = 0 if tag == BASE_TAG else 2 if tag == FINAL_TAG else 1
  return order, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", tag)]


def run_name(config: dict | None) -> str | None:
  """'<weights> / <track>: <divergence>', e.g. 'paced / two_stage: fkl then rkl'."""
  scheme, loss, track = (_get(config, key, None) for key in ("weights.scheme", "train.loss", "track"))
  if not scheme or not loss:
    return None
  # The two-stage schedule is forward then reverse KL unless another divergence replaces both.
  divergence = "fkl then rkl" if track == "two_stage" and loss in ("fkl", "rkl") else loss
  return f"{scheme} / {track}: {divergence}" if track else f"{scheme} / {divergence}"


def load_run(workdir: str) -> Run:
  """Everything the report reads from one workdir; absent or unreadable pieces are None / empty."""
  config = _read_json(workspace.config_file(workdir))
  if isinstance(config, dict) and "train" not in config and isinstance(config.get("config"), dict):
    config = config["config"]  # tolerate a wrapper {"config": {...}, ...}
  config = config if isinstance(config, dict) else None
  metrics_path = workspace.train_metrics_file(workdir)
  metrics = None
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      metrics = [json.loads(line) for line in f if line.strip()] or None
  evals, retain = {}, {}
  for d in sorted(glob.glob(os.path.join(workspace.eval_root(workdir), "*", "")), key=lambda d: _tag_key(os.path.basename(d[:-1]))):
    tag = os.path.basename(d[:-1])
    benches = {}
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
      s = _read_json(path)
      if os.path.basename(path) == "retain.json":
        if isinstance(s, dict) and s.get("accuracy") is not None:
          retain[tag] = s
      elif isinstance(s, dict) and "accuracy" in s and os.path.basename(path) != artifacts.MANIFEST:
        benches[s.get("benchmark") or os.path.basename(path)[:-5]] = s
    if benches:
      evals[tag] = benches
  name = run_name(config) or os.path.basename(os.path.normpath(workdir))
  return Run(workdir, name, config, metrics, evals, retain)
