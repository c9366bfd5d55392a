"""Problem records: the Problem dataclass, reading problem files with field maps, the split partition."""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import math
from typing import Any

from paced_jax.problems.sources import ProblemFileError, read_rows, source_stem

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
  """Where a problem file keeps each field: a column, or a dotted path into nested columns
  (`reward_model.ground_truth`); None = the file has no such column. A prompt stored as chat
  messages (a list of {role, content}) gives its user turn."""
  id: str | None = "id"
  prompt: str = "problem"
  answer: str = "answer"
  solution: str | None = "solution"
  level: str | None = "level"
  # The answer is the text after the last such marker (GSM8K's "####"); the text before it, the
  # solution, when `solution` names the same column.
  answer_after: str | None = None


# Field names of the published files, as on the hub (column names and nesting).
MATH500_FIELDS = FieldMap(id="unique_id")                            # HuggingFaceH4/MATH-500 jsonl
AIME_FIELDS = FieldMap(id="ID", prompt="Problem", answer="Answer", solution="Solution")  # Maxwell-Jia/AIME_2024
# yentinglin/aime_2025 and HuggingFaceH4/aime_2024: id, problem, solution, answer, url, year; math-ai/aime25:
# id, problem, answer (no solution column: that field is optional).
AIME2025_FIELDS = FieldMap(level=None)
# BytedTsinghua-SIA/DAPO-Math-17k (verl parquet): prompt = [{role: user, content}], data_source,
# ability, reward_model = {ground_truth, style}, extra_info = {index}.
DAPO_FIELDS = FieldMap(id="extra_info.index", prompt="prompt", answer="reward_model.ground_truth",
                       solution=None, level=None)
# open-r1/DAPO-Math-17k-Processed: the question alone in `prompt`, its answer in `solution` (no worked solution).
DAPO_PROCESSED_FIELDS = FieldMap(id="extra_info.index", prompt="prompt", answer="solution", solution=None, level=None)
GSM8K_FIELDS = FieldMap(id=None, prompt="question", answer="answer", solution="answer", level=None,
                        answer_after="####")                         # openai/gsm8k: question, answer
FIELD_PRESETS = {"default": FieldMap(), "math500": MATH500_FIELDS, "aime": AIME_FIELDS, "aime2024": AIME_FIELDS,
                 "aime2025": AIME2025_FIELDS, "dapo": DAPO_FIELDS, "dapo_processed": DAPO_PROCESSED_FIELDS,
                 "gsm8k": GSM8K_FIELDS}


_MISSING = object()


def field_value(row: dict, path: str) -> Any:
  """A column's value, following dots into nested objects; _MISSING (or None) when absent.

  A column whose own name has a dot wins over the nested reading.
  """
  if path in row:
    return row[path]
  value: Any = row
  for part in path.split("."):
    if not isinstance(value, dict) or part not in value:
      return _MISSING
    value = value[part]
  return value


def _user_turn(messages: list) -> Any:
  """The last user message's content of a chat-message prompt; None when there is none."""
  users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
  return users[-1] if users else None


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
    value = None if field is None else field_value(row, field)
    if value is _MISSING or value is None:
      if required:
        raise fail(field, f"missing (the row has {', '.join(map(repr, sorted(row)))})")
      return None
    return value

  prompt = get(fields.prompt, True)
  if isinstance(prompt, list):
    prompt = _user_turn(prompt)
    if prompt is None:
      raise fail(fields.prompt, "chat messages without a user turn (role 'user')")
  if not isinstance(prompt, str) or not prompt.strip():
    raise fail(fields.prompt, f"expected a non-empty string or chat messages, got {prompt!r:.80}")
  raw_answer = get(fields.answer, True)
  worked = None
  if fields.answer_after is not None:
    if not isinstance(raw_answer, str) or fields.answer_after not in raw_answer:
      raise fail(fields.answer, f"expected text with the answer after {fields.answer_after!r}, got {raw_answer!r:.80}")
    worked, _, raw_answer = raw_answer.rpartition(fields.answer_after)
  answer = _answer_text(raw_answer)
  if answer is None:
    raise fail(fields.answer, f"expected a non-empty string or a number, got {raw_answer!r:.80}")
  solution = get(fields.solution, False)
  if worked is not None and fields.solution == fields.answer:
    solution = worked.strip() or None
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
  """Load problems from a source (problems/sources.py: a file, a glob of shards, a datasets directory);
  rows without an id get `<stem>-<row>`."""
  stem = source_stem(path)
  problems, first_seen = [], {}
  for index, (location, row) in enumerate(read_rows(path)):
    problem = _row_problem(row, location, index, fields, stem, source or stem)
    if problem.id in first_seen:
      first, file = first_seen[problem.id], location.rpartition(": ")[0]
      first = first.removeprefix(file + ": ")  # in the same file: 'line 1' is enough
      raise ProblemFileError(f"{location}: field {fields.id!r}: duplicate id {problem.id!r} (first at {first})")
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


