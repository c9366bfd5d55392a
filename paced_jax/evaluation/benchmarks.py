"""Evaluation benchmarks: a spec string -> a named, identified list of problems.

A spec is one of
  heldout[:opts]             the workspace's held-out problems (WORKDIR/problems/heldout.jsonl)
  builtin:<name>[:opts]      a problem file shipped in paced_jax/problems/data/ (BUILTIN_FILES)
  <source>[:opts]           a .jsonl / .json / .parquet file, a glob of shards, or a directory
                             written by datasets' save_to_disk (problems/sources.py)
where opts are comma-separated key=value pairs: `name` (the result's file name; default the
file's stem), `fields` (a preset of column names, records.FIELD_PRESETS: default, math500,
aime/aime2024, aime2025, dapo, dapo_processed, gsm8k), `field_id`, `field_prompt`,
`field_answer`, `field_solution`, `field_level` (a column or a dotted path into nested columns,
or `none`), and `n` (evaluate only the first n problems). Examples:
  /data/MATH-500/test.jsonl:name=math500,fields=math500
  /data/gsm8k/main/test-*.parquet:name=gsm8k,fields=gsm8k
Nothing is downloaded: every benchmark is local.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
from typing import Any, Sequence

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax.problems.prepare import read_problems
from paced_jax.problems.records import FIELD_PRESETS, FieldMap, Problem, load_problem_file
from paced_jax.problems.sources import content_sha256, source_stem

HELDOUT = "heldout"
BUILTIN_PREFIX = "builtin:"
# name -> (file in paced_jax/problems/data/, its columns). See paced_jax/problems/data/README.md for sources and licenses.
BUILTIN_FILES: dict[str, tuple[str, FieldMap]] = {
    "champ": ("champ.jsonl", FieldMap(level=None)),
}
OPTIONS = ("name", "fields", "field_id", "field_prompt", "field_answer", "field_solution", "field_level", "n")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class BenchmarkError(ValueError):
  """A benchmark spec cannot be resolved; the message names the spec and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str                     # results go to eval/<tag>/<name>.json
  spec: str
  problems: tuple[Problem, ...]
  identity: dict[str, Any]      # what fixes the problem list (content hash, columns, n)


def data_path(filename: str) -> str:
  """Path of a file shipped in paced_jax/problems/data/."""
  return str(importlib.resources.files("paced_jax.problems").joinpath("data", filename))


def split_spec(spec: str, known: Sequence[str] = OPTIONS) -> tuple[str, dict[str, str]]:
  """'path:k=v,k=v' -> (path, {k: v}) for keys in `known`; a trailing part without '=' is path."""
  head, sep, tail = spec.rpartition(":")
  if not sep or "=" not in tail or "/" in tail:
    return spec, {}
  options = {}
  for item in tail.split(","):
    key, eq, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not eq or key not in known:
      raise BenchmarkError(f"{spec!r}: unknown option {item!r}; known: {', '.join(known)}")
    options[key] = value
  return head, options


def _fields(spec: str, options: dict[str, str], base: FieldMap) -> FieldMap:
  preset = options.get("fields")
  if preset is not None:
    if preset not in FIELD_PRESETS:
      raise BenchmarkError(f"benchmark {spec!r}: fields={preset!r} is not one of {', '.join(FIELD_PRESETS)}")
    base = FIELD_PRESETS[preset]
  changes = {}
  for key, value in options.items():
    if key.startswith("field_"):
      field = key.removeprefix("field_")
      if value.lower() == "none":
        if field in ("prompt", "answer"):
          raise BenchmarkError(f"benchmark {spec!r}: {key} is required and cannot be none")
        value = None
      changes[field] = value
  return dataclasses.replace(base, **changes)


def _limit(spec: str, options: dict[str, str], problems: list[Problem]) -> list[Problem]:
  if "n" not in options:
    return problems
  try:
    n = int(options["n"])
  except ValueError:
    raise BenchmarkError(f"benchmark {spec!r}: n={options['n']!r} is not an integer") from None
  if n <= 0:
    raise BenchmarkError(f"benchmark {spec!r}: n must be > 0, got {n}")
  return problems[:n]


def load_benchmark(spec: str, workdir: str) -> Benchmark:
  """Resolve one spec; a bad file raises problems.ProblemFileError naming the file, line and field."""
  target, options = split_spec(spec)
  if target == HELDOUT:
    if any(k.startswith("field") for k in options):
      raise BenchmarkError(f"benchmark {spec!r}: heldout problems are already normalised; field options do not apply")
    problems_dir = workspace.problems_dir(workdir)
    if not os.path.exists(os.path.join(problems_dir, artifacts.MANIFEST)):
      raise BenchmarkError(f"benchmark {spec!r}: {problems_dir} is not prepared; run the prepare stage first "
                           f"(python -m paced_jax.tools.prepare --workdir={workdir} ...)")
    problems = read_problems(workdir, "heldout")
    sha = artifacts.read_manifest(problems_dir, "problems")["checksums"]["heldout.jsonl"]
    name, identity = HELDOUT, {"heldout_sha256": sha}
  else:
    if target.startswith(BUILTIN_PREFIX):
      builtin = target[len(BUILTIN_PREFIX):]
      if builtin not in BUILTIN_FILES:
        raise BenchmarkError(f"benchmark {spec!r}: unknown built-in; known: "
                             f"{', '.join(BUILTIN_PREFIX + b for b in sorted(BUILTIN_FILES))}")
      filename, base = BUILTIN_FILES[builtin]
      path, name = data_path(filename), builtin
    else:
      path, base = target, FieldMap()
      name = source_stem(path)
    fields = _fields(spec, options, base)
    problems = load_problem_file(path, fields, source=name)
    # Identified by content (not path): a moved copy is the same benchmark, an edited one is not.
    identity = {"file": os.path.basename(path.rstrip("/")), "sha256": content_sha256(path),
                "fields": dataclasses.asdict(fields)}
  name = options.get("name", name)
  if not _NAME_RE.match(name):
    raise BenchmarkError(f"benchmark {spec!r}: name {name!r} is not a plain file name (letters, digits, _.+-)")
  problems = _limit(spec, options, problems)
  identity["n"] = len(problems)
  return Benchmark(name, spec, tuple(problems), identity)


def load_benchmarks(specs: Sequence[str], workdir: str) -> list[Benchmark]:
  """All specs, resolved up front (a bad file fails before any sampling); names must be unique."""
  loaded = [load_benchmark(s, workdir) for s in specs]
  seen: dict[str, str] = {}
  for b in loaded:
    if b.name in seen:
      raise BenchmarkError(f"benchmarks {seen[b.name]!r} and {b.spec!r} both write results named {b.name!r}; "
                           f"give one a name (append ':name=...')")
    seen[b.name] = b.spec
  return loaded
