"""Data sources of problem and benchmark files: one file, a glob of shards, or a `datasets` directory.

A source is
  a .jsonl / .json (array) / .parquet file,
  a glob such as `/data/dapo/*.parquet` or `train-0000*-of-00010.parquet` (files read in name order;
    hub-style `-of-NNNNN` shards must all be there), or
  a directory written by `datasets.Dataset.save_to_disk` (arrow files + dataset_info.json / state.json).
Rows come back as (location, row): '<file>: line N' (1-based) for jsonl, '<file>: row I' (0-based)
otherwise, so every error names the file and the row.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from typing import Any, Iterator

from paced_jax import artifacts

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
# What `datasets` writes: state.json for one Dataset, dataset_dict.json for a DatasetDict of splits.
DATASET_STATE, DATASET_DICT = "state.json", "dataset_dict.json"
_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})\.[a-z]+$")


class ProblemFileError(ValueError):
  """A problem file is unreadable or has a bad row; the message names file, line/row and field."""


def _is_glob(source: str) -> bool:
  return glob.has_magic(source)


def _check_shards(source: str, files: list[str]) -> None:
  """Matched `name-00003-of-00010.parquet` shards must be the whole set: a missing one is lost data."""
  totals = {m.group(2) for m in map(_SHARD_RE.search, files) if m}
  if not totals:
    return
  found = {m.group(1) for m in map(_SHARD_RE.search, files) if m}
  total = int(max(totals))
  if len(totals) > 1 or len(found) != total:
    missing = sorted(set(f"{i:05d}" for i in range(total)) - found)[:5]
    raise ProblemFileError(f"{source}: matches {len(found)} of {total} shards (missing e.g. {', '.join(missing)}); "
                           "a partial download?")


def data_files(source: str) -> list[str]:
  """The files holding a source's rows, in reading order."""
  if _is_glob(source):
    files = sorted(f for f in glob.glob(source) if os.path.isfile(f))
    if not files:
      raise ProblemFileError(f"{source}: no file matches")
    bad = [f for f in files if not f.endswith(FILE_SUFFIXES)]
    if bad:
      raise ProblemFileError(f"{bad[0]}: unsupported file type; expected .jsonl, .json or .parquet")
    _check_shards(source, files)
    return files
  if os.path.isdir(source):
    if os.path.exists(os.path.join(source, DATASET_DICT)):
      splits = artifacts.read_json(os.path.join(source, DATASET_DICT)).get("splits", [])
      example = os.path.join(source, splits[0] if splits else "train")
      raise ProblemFileError(f"{source}: a DatasetDict with splits {', '.join(splits)}; "
                             f"give one split's directory (e.g. {example})")
    state_path = os.path.join(source, DATASET_STATE)
    if not os.path.exists(state_path):
      raise ProblemFileError(f"{source}: a directory but not one written by datasets' save_to_disk "
                             f"(no {DATASET_STATE}); give a file or a glob such as {os.path.join(source, '*.parquet')}")
    state = artifacts.read_json(state_path)
    return [os.path.join(source, f["filename"]) for f in state.get("_data_files", [])]
  if not os.path.isfile(source):
    raise ProblemFileError(f"{source}: no such file")
  if not source.endswith(FILE_SUFFIXES):
    raise ProblemFileError(f"{source}: unsupported file type; expected .jsonl, .json or .parquet, "
                           "a glob of them, or a directory written by datasets' save_to_disk")
  return [source]


def content_sha256(source: str) -> str:
  """What identifies a source: its bytes, so a moved copy is the same data and an edited one is not.

  One file: that file's sha256 (as before globs existed). Several: a hash over (name, sha256) pairs.
  """
  files = data_files(source)
  if len(files) == 1 and not os.path.isdir(source):
    return artifacts.sha256_file(files[0])
  h = hashlib.sha256()
  for f in files:
    h.update(f"{os.path.basename(f)}\0{artifacts.sha256_file(f)}\n".encode())
  return h.hexdigest()


def file_digests(source: str) -> dict[str, str]:
  """{name: sha256} of a source's data files, names relative to the folder they share: what a stage
  records to tell later which file of a glob or dataset directory was edited, added or lost."""
  files = data_files(source)
  if not files:
    return {}
  root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
  return {os.path.relpath(os.path.abspath(f), root): artifacts.sha256_file(f) for f in files}


def source_stem(source: str) -> str:
  """A short name for a source: the file's stem, a directory's name, or the folder a glob lives in."""
  path = source.rstrip("/")
  if os.path.isdir(path) or _is_glob(os.path.basename(path)):
    folder = os.path.dirname(path) if _is_glob(os.path.basename(path)) else path
    return os.path.basename(os.path.abspath(folder)) or "data"
  return os.path.splitext(os.path.basename(path))[0]


def _utf8_position(path: str, start: int) -> str:
  """'line L' of the first byte that is not UTF-8 (the decoder's offset may be within a chunk, so rescan)."""
  with open(path, "rb") as f:
    for number, line in enumerate(f, 1):
      try:
        line.decode("utf-8")
      except UnicodeDecodeError:
        return f"line {number}"
  return f"byte {start}"


def _file_rows(path: str) -> Iterator[tuple[str, Any]]:
  try:
    yield from _decoded_file_rows(path)
  except UnicodeDecodeError as e:
    raise ProblemFileError(f"{path}: {_utf8_position(path, e.start)}: byte {e.object[e.start:e.start + 1]!r} "
                           "is not UTF-8 (problem files must be UTF-8)") from None


def _decoded_file_rows(path: str) -> Iterator[tuple[str, Any]]:
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ProblemFileError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
        yield f"{path}: line {lineno}", row
  elif path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise ProblemFileError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list):
      raise ProblemFileError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
      yield f"{path}: row {i}", row
  else:
    import pyarrow
    import pyarrow.dataset as pa_dataset
    try:  # batch by batch: a 17k-row parquet of long prompts need not be in memory twice
      batches = pa_dataset.dataset(path, format="parquet").to_batches()
      i = 0
      for batch in batches:
        for row in batch.to_pylist():
          yield f"{path}: row {i}", row
          i += 1
    except (pyarrow.ArrowException, OSError) as e:
      raise ProblemFileError(f"{path}: not a readable parquet file ({e})") from None


def _dataset_rows(directory: str) -> Iterator[tuple[str, Any]]:
  import datasets  # deferred: a second or two to import, and only directories need it
  try:
    ds = datasets.load_from_disk(directory)
  except (FileNotFoundError, ValueError, OSError) as e:
    raise ProblemFileError(f"{directory}: not a readable datasets directory ({e})") from None
  for i, row in enumerate(ds):
    yield f"{directory}: row {i}", row


def read_rows(source: str) -> Iterator[tuple[str, Any]]:
  """Every row of a source with its location ('<file>: line N' / '<file>: row I')."""
  files = data_files(source)
  if os.path.isdir(source):
    yield from _dataset_rows(source)
    return
  for path in files:
    yield from _file_rows(path)
