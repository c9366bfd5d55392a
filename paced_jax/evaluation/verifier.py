"""Answer verifier: final answers (answer_extraction), MATH normalisation (answer_normal), then
math-verify under a wall-clock bound.

A response is correct when it finished, states its final answer once (repeats of the same answer
are fine) and that answer equals the truth. Extraction and a string/number fast path run in the
calling process, in linear time. The rest goes to math-verify in spawned worker processes: its
own timeouts use signal.alarm (main thread only, so they are switched off here), and a sympy call
stuck in C can only be stopped by killing the process that runs it. Never fork: the parent usually
has JAX initialised. Forms sympy would evaluate for minutes (towers of powers) never reach it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import re
import time
from typing import Callable, Sequence

from paced_jax.config import STRATEGIES, VerifierConfig
from paced_jax.evaluation import answer_extraction, answer_normal
from paced_jax.evaluation.answer_extraction import extract_answer

__all__ = ["STRATEGIES", "Compare", "Grader", "Verdict", "VerifierConfig", "extract_answer", "grade",
           "math_verify_equal"]

# (answer, truth) -> equivalent?  Both are cleaned LaTeX strings. Must be picklable for Grader.
Compare = Callable[[str, str], bool]

_STARTUP_TIMEOUT_S = 120.0
_MAX_STARTUP_FAILURES = 3


@dataclasses.dataclass(frozen=True)
class Verdict:
  """Grade of one response.

  reason: "exact" / "numeric" (fast path), "equivalent" (math-verify), "mismatch", "no_answer",
  "truncated" (cut off: an open box, a half-written answer, or not finished), "hedged" (two
  different final answers, or "5 or 6", for a truth that is one answer), "empty_truth",
  "too_long", "too_complex" (towers of powers, huge exponents, deep nesting: no math-verify),
  "timeout", "worker_crash: exit code N", or "error: <exception>".
  """

  correct: bool
  extracted: str | None
  reason: str


_MAX_DEPTH = 12
# 9^9^9, 9^{9^{9}}, 2^{123456}, 100000!: sympy would evaluate them for minutes or exhaust memory.
_HUGE_RE = re.compile(r"\^\s*\(?\s*\d+\s*\)?\s*\^|\^\s*\{[^{}]{0,200}\^|\^\s*\{?\s*\d{5,}|\d{4,}\s*!|\d{301}")


def _too_complex(s: str) -> bool:
  depth = deepest = 0
  for ch in s:
    if ch == "{":
      depth += 1
      deepest = max(deepest, depth)
    elif ch == "}":
      depth -= 1
  return deepest > _MAX_DEPTH or _HUGE_RE.search(s) is not None


def _key(answer: str) -> object:
  """Two final answers are the same answer when their MATH keys are equal."""
  squashed = answer_normal.squashed(answer)
  number = answer_normal.as_number(squashed)
  return squashed if number is None else number


def _prejudge(response: str, truth: str, cfg: VerifierConfig,
              finished: bool = True) -> Verdict | tuple[str, str, str]:
  """A final Verdict when no math-verify is needed, else (extracted, answer, gold) for it."""
  found = answer_extraction.extract(response, cfg)
  extracted = found.answers[-1] if found.answers else None
  if found.truncated or not finished:
    return Verdict(False, extracted, "truncated")
  if extracted is None:
    return Verdict(False, None, "no_answer")
  if "\\boxed" in truth or "\\fbox" in truth:
    truth = answer_extraction.extract_answer(truth, VerifierConfig(extract=("boxed",))) or truth
  gold = answer_normal.canonical(truth)
  if not gold:
    return Verdict(False, extracted, "empty_truth")
  several = answer_normal.lists_several(gold) or answer_normal.has_alternatives(gold)
  distinct = list({_key(a): a for a in (*found.answers, *found.others)}.values())
  if len(distinct) > 1 and not several:
    return Verdict(False, extracted, "hedged")
  # Several answers for a truth that lists several ("\\boxed{3} and \\boxed{5}" for "3, 5") form one list.
  answer = ", ".join(answer_normal.canonical(a) for a in distinct) if several else answer_normal.canonical(extracted)
  if answer_normal.has_alternatives(answer) and not several:
    return Verdict(False, extracted, "hedged")
  a_str, g_str = answer_normal.squashed(answer), answer_normal.squashed(gold)
  if a_str == g_str:
    return Verdict(True, extracted, "exact")
  a_num, g_num = answer_normal.as_number(a_str), answer_normal.as_number(g_str)
  if a_num is not None and g_num is not None:
    if a_num == g_num:
      return Verdict(True, extracted, "numeric")
    # Decimals still go to math-verify, which accepts 0.333333 for 1/3; distinct integers never match.
    if a_num.denominator == 1 and g_num.denominator == 1:
      return Verdict(False, extracted, "mismatch")
  if not cfg.math_verify:
    return Verdict(False, extracted, "mismatch")
  if len(answer) > cfg.max_answer_chars:
    return Verdict(False, extracted, "too_long")
  if _too_complex(answer) or _too_complex(gold):
    return Verdict(False, extracted, "too_complex")
  return extracted, answer, gold


def math_verify_equal(answer: str, truth: str) -> bool:
  """math-verify equivalence of two bare LaTeX answers, with its signal-based timeouts off.

  Both go in as `\\boxed{...}`: its LaTeX extraction reads boxes best (`$\\frac{25}{2}\\%$` parses
  to nothing, `\\boxed{\\frac{25}{2}\\%}` to 25/200), and a box is taken whole, where its fallback
  extraction would pick a number out of an answer like "5 or 6".
  """
  import math_verify

  config = [math_verify.LatexExtractionConfig(boxed_match_priority=0)]
  gold = math_verify.parse(f"\\boxed{{{truth}}}", extraction_config=config, fallback_mode="no_fallback",
                           parsing_timeout=None)
  pred = math_verify.parse(f"\\boxed{{{answer}}}", extraction_config=config, fallback_mode="no_fallback",
                           parsing_timeout=None)
  # allow_set_relation_comp: "0 \\le x < 1" is the interval [0, 1), as MATH graders take it.
  return bool(gold) and bool(pred) and bool(math_verify.verify(gold, pred, timeout_seconds=None,
                                                               allow_set_relation_comp=True))


def _compare_one(compare: Compare, answer: str, gold: str) -> tuple[bool, str]:
  try:
    ok = bool(compare(answer, gold))
  except Exception as e:  # a grading bug must cost one item, not the run
    return False, f"error: {type(e).__name__}: {e}"[:300]
  return ok, "equivalent" if ok else "mismatch"


def grade(response: str, truth: str, cfg: VerifierConfig = VerifierConfig(),
          compare: Compare | None = None, finished: bool = True) -> Verdict:
  """Grade one response in this process, without a time bound (tests, debugging).

  finished: False when the response was cut off (no stop token): never correct."""
  pre = _prejudge(response, truth, cfg, finished)
  if isinstance(pre, Verdict):
    return pre
  extracted, answer, gold = pre
  ok, reason = _compare_one(compare or math_verify_equal, answer, gold)
  return Verdict(ok, extracted, reason)


def _worker_main(conn: mpc.Connection, compare: Compare | None) -> None:
  # Nobody reads worker logs; math-verify warns once per process that its timeout is off.
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  if compare is None:
    compare = math_verify_equal
    compare("1/2", "\\frac{1}{2}")  # first parse builds grammars: keep that out of item deadlines
  conn.send(None)
  while True:
    try:
      job = conn.recv()
    except EOFError:
      return
    if job is None:
      return
    index, answer, gold = job
    conn.send((index, *_compare_one(compare, answer, gold)))


class _Worker:
  def __init__(self, ctx: mp.context.BaseContext, compare: Compare | None):
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(target=_worker_main, args=(child, compare), daemon=True, name="paced-verifier")
    self.proc.start()
    child.close()  # else the parent holds the child's end open and never sees EOF when it dies
    self.started = time.monotonic()
    self.ready = False
    self.job: tuple[int, float] | None = None  # (item index, deadline)

  def kill(self) -> None:
    self.proc.kill()
    self.proc.join(10)
    self.conn.close()


class Grader:
  """Grades many responses in worker processes; each item gets at most `cfg.timeout_s`.

  A worker that exceeds the bound is killed and replaced (verdict "timeout"); one that dies gives
  "worker_crash". Use as a context manager; not thread-safe. `compare` replaces math-verify
  (a picklable module-level function; tests use it to inject hangs and crashes). Workers start
  on first need and re-import the parent's __main__ (spawn semantics), so scripts need the
  `if __name__ == "__main__":` guard.
  """

  def __init__(self, cfg: VerifierConfig = VerifierConfig(), compare: Compare | None = None):
    self.cfg = cfg
    self._compare = compare
    self._ctx = mp.get_context(cfg.start_method)
    self._max_workers = cfg.workers or min(4, os.cpu_count() or 1)
    self._workers: list[_Worker] = []
    self._startup_failures = 0

  def __enter__(self) -> Grader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    for w in self._workers:
      w.kill()
    self._workers.clear()

  def grade_many(self, responses: Sequence[str], truths: Sequence[str],
                 finished: Sequence[bool] | None = None) -> list[Verdict]:
    """Verdicts in input order. finished: per response, False if it was cut off (see grade)."""
    finished = [True] * len(responses) if finished is None else finished
    if not len(responses) == len(truths) == len(finished):
      raise ValueError(f"{len(responses)} responses, {len(truths)} truths, {len(finished)} finished flags")
    results: list[Verdict | None] = [None] * len(responses)
    jobs: dict[int, tuple[str, str, str]] = {}
    for i, (response, truth, done) in enumerate(zip(responses, truths, finished)):
      pre = _prejudge(response, truth, self.cfg, done)
      if isinstance(pre, Verdict):
        results[i] = pre
      else:
        jobs[i] = pre
    if jobs:
      try:
        self._run(jobs, results)
      except BaseException:
        self.close()  # workers may hold jobs of this call; never let them answer the next one
        raise
    return results  # type: ignore[return-value]

  def _run(self, jobs: dict[int, tuple[str, str, str]], results: list[Verdict | None]) -> None:
    for w in [w for w in self._workers if not w.proc.is_alive()]:
      self._replace(w)  # died while idle between calls: not the fault of any item
    while len(self._workers) < min(self._max_workers, len(jobs)):
      self._workers.append(_Worker(self._ctx, self._compare))
    pending = collections.deque(jobs)
    while pending or any(w.job for w in self._workers):
      for w in self._workers:
        if w.ready and w.job is None and pending:
          index = pending.popleft()
          w.job = (index, time.monotonic() + self.cfg.timeout_s)
          try:
            w.conn.send((index, *jobs[index][1:]))
          except OSError:
            pass  # it died; the wait below sees EOF and records the crash
      waiting = [w for w in self._workers if w.job or not w.ready]
      deadline = min(w.job[1] if w.job else w.started + _STARTUP_TIMEOUT_S for w in waiting)
      readable = mpc.wait([w.conn for w in waiting], max(0.0, deadline - time.monotonic()))
      now = time.monotonic()
      for w in waiting:
        if w.conn in readable:
          self._receive(w, jobs, results)
        elif w.job and now >= w.job[1]:
          results[w.job[0]] = Verdict(False, jobs[w.job[0]][0], "timeout")
          self._replace(w)
        elif not w.ready and now >= w.started + _STARTUP_TIMEOUT_S:
          self._replace(w)

  def _receive(self, w: _Worker, jobs: dict[int, tuple[str, str, str]], results: list[Verdict | None]) -> None:
    try:
      msg = w.conn.recv()
    except (EOFError, OSError):
      if w.job:
        w.proc.join(10)
        results[w.job[0]] = Verdict(False, jobs[w.job[0]][0], f"worker_crash: exit code {w.proc.exitcode}")
      self._replace(w)
      return
    if not w.ready:
      w.ready, self._startup_failures = True, 0
      return
    index, ok, reason = msg
    if w.job and index == w.job[0]:
      results[index] = Verdict(ok, jobs[index][0], reason)
      w.job = None

  def _replace(self, w: _Worker) -> None:
    """Kill `w` and start a fresh worker in its place; give up if workers cannot even start."""
    w.kill()
    self._workers.remove(w)
    if not w.ready:
      self._startup_failures += 1
      if self._startup_failures >= _MAX_STARTUP_FAILURES:
        raise RuntimeError(f"verifier workers failed to start {self._startup_failures} times in a row "
                           f"(last exit code {w.proc.exitcode})")
    self._workers.append(_Worker(self._ctx, self._compare))
