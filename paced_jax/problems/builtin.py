"""Built-in problem generators, usable as `builtin:<name>` sources (reasoning-gym, easy arithmetic, the lab's tasks)."""

from __future__ import annotations

import functools
import importlib.metadata
import random
from typing import Any, Callable

from paced_jax.problems import lab_arithmetic
from paced_jax.problems.records import HELDOUT_BUCKETS, SPLITS, Problem, in_split, split_seed

PREFIX = "builtin:"


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


# Name -> fn(n, seed, split); an entry added here is usable as `builtin:<name>`.
BUILTIN_SOURCES: dict[str, Callable[[int, int, str], list[Problem]]] = {
    **{name: functools.partial(_reasoning_gym, name) for name in RG_CONFIGS},
    **{name: functools.partial(_easy_arithmetic, levels=levels) for name, levels in EASY_SOURCES.items()},
    lab_arithmetic.NAME: lab_arithmetic.generate,  # the method lab's graded synthetic tasks
}


def settings(name: str) -> dict[str, Any]:
  """What fixes a built-in source's problems besides n, seed and split (kept in the manifest)."""
  if name in RG_CONFIGS:
    return {"reasoning_gym": importlib.metadata.version("reasoning-gym"), "dataset": name,
            "config": RG_CONFIGS[name], "heldout_buckets": HELDOUT_BUCKETS}
  if name in EASY_SOURCES:
    return {"levels": list(EASY_SOURCES[name]), "prompt": EASY_PROMPT, "heldout_buckets": HELDOUT_BUCKETS}
  if name == lab_arithmetic.NAME:
    return {**lab_arithmetic.settings(), "heldout_buckets": HELDOUT_BUCKETS}
  return {}


def check_name(name: str) -> None:
  if name not in BUILTIN_SOURCES:
    raise ValueError(f"unknown built-in source {name!r}; known: {', '.join(sorted(BUILTIN_SOURCES))}")


def generate(name: str, n: int, seed: int, split: str) -> list[Problem]:
  """`n` distinct problems of one split; the same (name, n, seed, split) always gives the same list."""
  check_name(name)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  return BUILTIN_SOURCES[name](n, seed, split) if n else []


