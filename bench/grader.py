"""The answer grader against hand labels (tests/data/grading_cases.jsonl), with math-verify alone.

The grader runs with default settings (VerifierConfig()) in its process pool, one item per call so
each item's wall time is measured (dispatch to verdict, the bound is timeout_s). "math-verify
alone" is its documented use: parse(whole response) against parse(\\boxed{truth}), verify, with its
own signal timeouts (5 s each) in a worker's main thread; a watchdog kills a worker stuck in C.

  PYTHONPATH=. .venv/bin/python bench/grader.py [--cases=PATH] [--lenient]
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import pathlib
import time

from paced_jax.config import STRATEGIES, VerifierConfig
from paced_jax.evaluation.verifier import Grader

CASES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "grading_cases.jsonl"
FP_FAMILIES = ("hedge", "no_answer", "truncated")
_WATCHDOG_S = 60.0


def load_cases(path: pathlib.Path = CASES) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_grader(cases: list[dict], cfg: VerifierConfig) -> tuple[list[bool], list[float]]:
  verdicts, times = [], []
  with Grader(cfg) as grader:
    grader.grade_many(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"])  # start a math-verify worker before timing
    for c in cases:
      t0 = time.perf_counter()
      [v] = grader.grade_many([c["response"]], [c["truth"]], [c.get("finished", True)])
      times.append(time.perf_counter() - t0)
      verdicts.append(v.correct)
  return verdicts, times


def _math_verify_alone(response: str, truth: str) -> tuple[bool, float]:
  import logging

  import math_verify
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  t0 = time.perf_counter()
  try:
    gold = math_verify.parse(f"\\boxed{{{truth}}}")
    ok = bool(math_verify.verify(gold, math_verify.parse(response)))
  except Exception:  # noqa: BLE001 - counts as "wrong", as a grading loop would
    ok = False
  return ok, time.perf_counter() - t0


def run_math_verify(cases: list[dict]) -> tuple[list[bool], list[float]]:
  ctx = mp.get_context("spawn")
  verdicts, times = [], []
  pool = ctx.Pool(1)
  pool.apply(_math_verify_alone, ("1", "1"))
  for c in cases:
    t0 = time.perf_counter()
    try:
      ok, _ = pool.apply_async(_math_verify_alone, (c["response"], c["truth"])).get(_WATCHDOG_S)
    except mp.TimeoutError:
      pool.terminate()
      pool = ctx.Pool(1)
      ok = False
    times.append(time.perf_counter() - t0)
    verdicts.append(ok)
  pool.terminate()
  return verdicts, times


def summarize(name: str, cases: list[dict], verdicts: list[bool], times: list[float]) -> dict:
  n = len(cases)
  agree = sum(v == c["label"] for v, c in zip(verdicts, cases))
  fp = [c for v, c in zip(verdicts, cases) if v and not c["label"]]
  fn = [c for v, c in zip(verdicts, cases) if not v and c["label"]]
  print(f"\n## {name}")
  print(f"agreement {agree}/{n} = {100 * agree / n:.1f}%   false positives {len(fp)}   false negatives {len(fn)}")
  print("false positives on " + ", ".join(f"{f}: {sum(c['family'] == f for c in fp)}" for f in FP_FAMILIES))
  slowest = max(range(n), key=times.__getitem__)
  print(f"time per item: mean {1e3 * sum(times) / n:.1f} ms, max {1e3 * times[slowest]:.0f} ms "
        f"([{cases[slowest]['family']}] {cases[slowest]['note']})")
  fams = collections.defaultdict(lambda: [0, 0])
  for v, c in zip(verdicts, cases):
    fams[c["family"]][0] += v == c["label"]
    fams[c["family"]][1] += 1
  print("| family | agree | cases |\n|---|---|---|")
  for f, (a, k) in fams.items():
    print(f"| {f} | {a} | {k} |")
  for kind, items in (("false positive", fp), ("false negative", fn)):
    for c in items:
      print(f"  {kind}: [{c['family']}] {c['note']}: {c['response'][:60]!r} vs {c['truth'][:30]!r}")
  return {"agreement": agree / n, "fp": len(fp), "fn": len(fn), "max_s": max(times)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", type=pathlib.Path, default=CASES)
  parser.add_argument("--lenient", action="store_true", help="also run extract=STRATEGIES (last_number on)")
  args = parser.parse_args()
  cases = load_cases(args.cases)
  print(f"{len(cases)} hand-labelled cases from {args.cases}")
  summarize("grader, default settings", cases, *run_grader(cases, VerifierConfig()))
  if args.lenient:
    summarize(f"grader, extract={STRATEGIES}", cases, *run_grader(cases, VerifierConfig(extract=STRATEGIES)))
  summarize("math-verify alone", cases, *run_math_verify(cases))


if __name__ == "__main__":
  main()
