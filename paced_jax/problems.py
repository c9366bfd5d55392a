"""Problem sets: file loaders, built-in generators, and the `prepare` stage that writes
WORKDIR/problems/{train,heldout}.jsonl (one Problem per line) + manifest (DESIGN.md section 1).
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import random
from typing import Any, Callable, Iterator

from paced_jax import artifacts

KIND = "problems"
SUBDIR = "problems"
SPLITS = ("train", "heldout")
BUILTIN_PREFIX = "builtin:"
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


# reasoning-gym dataset configs (keys of its *DatasetConfig dataclasses).
RG_CONFIGS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": dict(min_terms=2, max_terms=4, min_digits=1, max_digits=3),
    "gsm_symbolic": dict(difficulty=1.0),
}


def _reasoning_gym(name: str, n: int, seed: int, split: str) -> list[Problem]:
  import reasoning_gym  # slow import; only built-ins need it
  cap = 20 * n + 100  # the held-out partition keeps 1 in 5 candidates; 20x leaves ample room
  dataset = reasoning_gym.create_dataset(name, seed=split_seed(seed, split), size=cap, **RG_CONFIGS[name])
  problems, seen = [], set()
  for idx in range(cap):
    if len(problems) == n:
      break
    item = dataset[idx]
    key = " ".join(item["question"].split())
    if key in seen or not in_split(key, split):
      continue
    seen.add(key)
    meta = item["metadata"]
    # basic_arithmetic's level: (terms - 1) + (digits - 1), its two curriculum axes in one tag.
    level = meta["num_terms"] + meta["num_digits"] - 2 if name == "basic_arithmetic" else None
    problems.append(Problem(
        id=f"{name}/{split}/{idx}", prompt=item["question"], answer=str(item["answer"]),
        solution=meta.get("answer_cot"), source=name, level=level))
  if len(problems) < n:
    raise ValueError(f"{name}: only {len(problems)} distinct {split} problems in {cap} draws, asked for {n}")
  return problems


EASY_PROMPT = "What is {a} {op} {b}? Answer with the number only."
# level: (first operands, second operands, operators); subtraction never goes below zero.
EASY_LEVELS: dict[int, tuple[range, range, str]] = {
    1: (range(10), range(10), "+"),
    2: (range(10), range(10), "-"),
    3: (range(10, 100), range(10), "+-"),
    4: (range(10, 100), range(10, 100), "+-"),
}


def _easy_arithmetic(n: int, seed: int, split: str, levels: tuple[int, ...]) -> list[Problem]:
  """Addition / subtraction with non-negative results, for a weak student (FINDINGS.md)."""
  rng = random.Random(split_seed(seed, split))
  pools = []
  for level in levels:
    firsts, seconds, ops = EASY_LEVELS[level]
    pool = [(a, op, b) for a in firsts for b in seconds for op in ops
            if (op == "+" or a >= b) and in_split(f"{a}{op}{b}", split)]
    rng.shuffle(pool)
    pools.append((level, pool))
  problems = []
  # Round robin so each level is equally represented until its (small, finite) pool runs out.
  while len(problems) < n and any(pool for _, pool in pools):
    for level, pool in pools:
      if pool and len(problems) < n:
        a, op, b = pool.pop()
        problems.append(Problem(
            id=f"easy_arithmetic/{split}/{a}{'p' if op == '+' else 'm'}{b}",
            prompt=EASY_PROMPT.format(a=a, op=op, b=b), answer=str(a + b if op == "+" else a - b),
            solution=None, source="easy_arithmetic", level=level))
  if len(problems) < n:
    raise ValueError(f"easy_arithmetic levels {list(levels)}: only {len(problems)} distinct {split} "
                     f"problems exist, asked for {n}")
  return problems


# Name -> levels of the easy pools; 1-digit only (levels 1-2) has 155 problems in all.
EASY_SOURCES = {"easy_arithmetic": (1, 2, 3), "easy_arithmetic_1digit": (1, 2)}


def _lab_arithmetic(n: int, seed: int, split: str) -> list[Problem]:
  from paced_jax import lab_tasks  # deferred: lab_tasks imports this module
  return lab_tasks.generate(n, seed, split)


# Name -> fn(n, seed, split); an entry added here is usable as `builtin:<name>`.
BUILTIN_SOURCES: dict[str, Callable[[int, int, str], list[Problem]]] = {
    **{name: functools.partial(_reasoning_gym, name) for name in RG_CONFIGS},
    **{name: functools.partial(_easy_arithmetic, levels=levels) for name, levels in EASY_SOURCES.items()},
    "lab_arithmetic": _lab_arithmetic,  # the method lab's graded synthetic tasks (lab_tasks.py)
}


def builtin_settings(name: str) -> dict[str, Any]:
  """What fixes a built-in source's problems besides n, seed and split (kept in the manifest)."""
  if name in RG_CONFIGS:
    return {"reasoning_gym": importlib.metadata.version("reasoning-gym"), "dataset": name,
            "config": RG_CONFIGS[name], "heldout_buckets": HELDOUT_BUCKETS}
  if name in EASY_SOURCES:
    return {"levels": list(EASY_SOURCES[name]), "prompt": EASY_PROMPT, "heldout_buckets": HELDOUT_BUCKETS}
  if name == "lab_arithmetic":
    from paced_jax import lab_tasks
    return {**lab_tasks.settings(), "heldout_buckets": HELDOUT_BUCKETS}
  return {}


def _check_builtin(name: str) -> None:
  if name not in BUILTIN_SOURCES:
    raise ValueError(f"unknown built-in source {name!r}; known: {', '.join(sorted(BUILTIN_SOURCES))}")


def generate_builtin(name: str, n: int, seed: int, split: str) -> list[Problem]:
  """`n` distinct problems of one split; the same (name, n, seed, split) always gives the same list."""
  _check_builtin(name)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  return BUILTIN_SOURCES[name](n, seed, split) if n else []


def _config(source: str, n_train: int | None, n_heldout: int, seed: int, fields: FieldMap) -> dict:
  config: dict[str, Any] = {"n_train": n_train, "n_heldout": n_heldout, "seed": seed}
  if source.startswith(BUILTIN_PREFIX):
    name = source[len(BUILTIN_PREFIX):]
    _check_builtin(name)
    if n_train is None:
      raise ValueError(f"{source}: n_train is required for a built-in source")
    config.update(source=source, generator=builtin_settings(name))
  else:
    if not os.path.isfile(source):
      raise ProblemFileError(f"{source}: no such file")
    # The file is identified by content, so a moved copy is accepted and an edited one refused.
    config.update(source="file:" + os.path.basename(source), file_sha256=artifacts.sha256_file(source),
                  fields=dataclasses.asdict(fields))
  return json.loads(json.dumps(config))  # tuples become lists, as they will read back from JSON


def _splits(source: str, n_train: int | None, n_heldout: int, seed: int,
            fields: FieldMap) -> dict[str, list[Problem]]:
  if source.startswith(BUILTIN_PREFIX):
    name = source[len(BUILTIN_PREFIX):]
    return {"train": generate_builtin(name, n_train, seed, "train"),
            "heldout": generate_builtin(name, n_heldout, seed, "heldout")}
  problems = load_problem_file(source, fields)
  want = n_heldout + (n_train if n_train is not None else 0)
  if want > len(problems):
    raise ValueError(f"{source}: has {len(problems)} problems, fewer than n_heldout={n_heldout} "
                     f"+ n_train={n_train}")
  order = list(range(len(problems)))
  random.Random(seed).shuffle(order)
  heldout = sorted(order[:n_heldout])  # keep file order inside each split
  train = sorted(order[n_heldout:] if n_train is None else order[n_heldout:n_heldout + n_train])
  return {"train": [problems[i] for i in train], "heldout": [problems[i] for i in heldout]}


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
  .parquet file read with `fields`, shuffled with `seed` and split into `n_heldout` held-out and
  `n_train` (None: all the rest) training problems. A complete directory prepared with the same
  config is reused as it is; one prepared with a different config is refused (ArtifactError).
  """
  if n_heldout < 0 or (n_train is not None and n_train < 0):
    raise ValueError(f"counts must be >= 0, got n_train={n_train} n_heldout={n_heldout}")
  directory = os.path.join(workdir, SUBDIR)
  config = _config(source, n_train, n_heldout, seed, fields)
  manifest_path = os.path.join(directory, artifacts.MANIFEST)
  if os.path.exists(manifest_path):
    manifest = artifacts.read_manifest(directory, KIND)
    if isinstance(manifest.get("config"), dict):
      artifacts.expect_fields(manifest_path, manifest["config"], config)  # names the setting that differs
    artifacts.expect_fields(manifest_path, manifest, {"config": config})
    _verify(directory, manifest, SPLITS)
    return directory

  splits = _splits(source, n_train, n_heldout, seed, fields)
  os.makedirs(directory, exist_ok=True)
  for name in os.listdir(directory):  # temporaries a killed run left behind
    if name.startswith(".") and name.endswith(".tmp"):
      os.unlink(os.path.join(directory, name))
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
  directory = os.path.join(workdir, SUBDIR)
  manifest = artifacts.read_manifest(directory, KIND)
  _verify(directory, manifest, (split,))
  with open(os.path.join(directory, split + ".jsonl"), encoding="utf-8") as f:
    return [Problem(**json.loads(line)) for line in f if line.strip()]
