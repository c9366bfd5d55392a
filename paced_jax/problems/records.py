"""Problem records: the Problem dataclass, reading problem files with field maps, the split partition."""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import json
import math
import os
from typing import Any, Iterator


SPLITS = ("train", "heldout")
# One problem key in HELDOUT_BUCKETS lands in the held-out partition (a hash of the key decides).
HELDOUT_BUCKETS = 5


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: the prompt shown to the model and its ground-truth answer."""
  id: str
  prompt: str
  answer: str
  solution: str | None
  source: str
  level: int | None = None  # difficulty tag, when the source has one


@dataclasses.dataclass(frozen=True)
class FieldMap:
  """Column names a problem file stores each field under; None = the file has no such column."""
  id: str | None = "id"
  prompt: str = "problem"
  answer: str = "answer"
  solution: str | None = "solution"
  level: str | None = "level"


# Field names of the published files (HuggingFaceH4/MATH-500 jsonl, Maxwell-Jia/AIME_2024 parquet).
MATH500_FIELDS = FieldMap(id="unique_id")
AIME_FIELDS = FieldMap(id="ID", prompt="Problem", answer="Answer", solution="Solution")


class ProblemFileError(ValueError):
  """A problem file is unreadable or has a bad row; the message names file, line/row and field."""


def _rows(path: str) -> Iterator[tuple[str, Any]]:
  """Yield (location, row): 'line N' (1-based) for jsonl, 'row I' (0-based) for json and parquet."""
  if not os.path.isfile(path):
    raise ProblemFileError(f"{path}: no such file")
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ProblemFileError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
        yield f"line {lineno}", row
  elif path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise ProblemFileError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list):
      raise ProblemFileError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
      yield f"row {i}", row
  elif path.endswith(".parquet"):
    import pyarrow
    import pyarrow.parquet as pq
    try:
      table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError) as e:
      raise ProblemFileError(f"{path}: not a readable parquet file ({e})") from None
    for i, row in enumerate(table.to_pylist()):
      yield f"row {i}", row
  else:
    raise ProblemFileError(f"{path}: unsupported file type; expected .jsonl, .json or .parquet")


def _answer_text(value: Any) -> str | None:
  """The answer as a string; None unless it is a non-empty string or a finite number."""
  if isinstance(value, str):
    return value.strip() or None
  if isinstance(value, int) and not isinstance(value, bool):  # True is no answer
    return str(value)
  if isinstance(value, (float, decimal.Decimal)) and math.isfinite(value):
    # Float columns (e.g. parquet with nulls) hold integer answers as 33.0; the answer is "33".
    return str(int(value)) if value == int(value) else str(value)
  return None


def _level(value: Any) -> int | None:
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if not isinstance(value, str):
    raise ValueError(f"expected an integer or a string like 'Level 3', got {type(value).__name__}")
  digits = "".join(c for c in value if c.isdigit())
  return int(digits) if digits else None  # MATH has a few "Level ?" rows: no level, not an error


def _row_problem(row: Any, where: str, index: int, fields: FieldMap, stem: str, source: str) -> Problem:
  if not isinstance(row, dict):
    raise ProblemFileError(f"{where}: expected an object, got {type(row).__name__}")

  def fail(field: str | None, what: str) -> ProblemFileError:
    return ProblemFileError(f"{where}: field {field!r}: {what}")

  def get(field: str | None, required: bool) -> Any:
    if field is None or row.get(field) is None:
      if required:
        raise fail(field, f"missing (the row has {', '.join(map(repr, sorted(row)))})")
      return None
    return row[field]

  prompt = get(fields.prompt, True)
  if not isinstance(prompt, str) or not prompt.strip():
    raise fail(fields.prompt, f"expected a non-empty string, got {prompt!r:.80}")
  raw_answer = get(fields.answer, True)
  answer = _answer_text(raw_answer)
  if answer is None:
    raise fail(fields.answer, f"expected a non-empty string or a number, got {raw_answer!r:.80}")
  solution = get(fields.solution, False)
  if solution is not None and not isinstance(solution, str):
    raise fail(fields.solution, f"expected a string, got {type(solution).__name__}")
  raw_id = get(fields.id, False)
  if raw_id is None:
    pid = f"{stem}-{index}"
  elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
    pid = str(raw_id).strip()
  else:
    raise fail(fields.id, f"expected a non-empty string or an integer, got {raw_id!r:.80}")
  raw_level = get(fields.level, False)
  try:
    level = None if raw_level is None else _level(raw_level)
  except ValueError as e:
    raise fail(fields.level, str(e)) from None
  return Problem(id=pid, prompt=prompt, answer=answer, solution=solution, source=source, level=level)


def load_problem_file(path: str, fields: FieldMap = FieldMap(), source: str | None = None) -> list[Problem]:
  """Load a .jsonl / .json (array) / .parquet problem file; rows without an id get `<stem>-<row>`."""
  stem = os.path.splitext(os.path.basename(path))[0]
  problems, first_seen = [], {}
  for index, (location, row) in enumerate(_rows(path)):
    problem = _row_problem(row, f"{path}: {location}", index, fields, stem, source or stem)
    if problem.id in first_seen:
      raise ProblemFileError(
          f"{path}: {location}: field {fields.id!r}: duplicate id {problem.id!r} "
          f"(first at {first_seen[problem.id]})")
    first_seen[problem.id] = location
    problems.append(problem)
  return problems


def split_seed(seed: int, split: str) -> int:
  """The generator seed of one split; hashed so that nearby user seeds give unrelated streams."""
  return int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:4], "little")


def in_split(key: str, split: str) -> bool:
  """Fixed partition of problem keys, independent of the seed: no key is in both splits."""
  bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % HELDOUT_BUCKETS
  return (bucket == 0) == (split == "heldout")


