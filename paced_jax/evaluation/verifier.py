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
import math
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


_MAX_FINALS = 64  # more differently written final answers than this is a hedge without looking closer
_MAX_DEPTH = 12
_MAX_DIGITS = 10_000
# sympy evaluates integer powers and factorials eagerly: 9^{9^{9}} would run for hours.
_POWER_RE = re.compile(r"(?<!\d)\d+(?:[\s{}()]*\^[\s{}()]*\d+)+")
_HUGE_RE = re.compile(r"(?<!\d)\d{5,}\s*!|\d{301}|\^[\s{}()]*\^")  # 100000!, 301 digits, 9^^9 / 9^{^9}


def _power_digits(tower: str) -> float:
  """About how many digits a^(b^(c...)) of literal integers has (inf when that is astronomical)."""
  numbers = re.findall(r"\d+", tower)
  if len(numbers) > 8 or any(len(x) > 300 for x in numbers):
    return math.inf
  *bases, exponent = [int(x) for x in numbers]
  for base in reversed(bases):
    if base < 2 or exponent == 0:
      exponent = 1 if exponent == 0 or base == 1 else base
      continue
    if exponent > _MAX_DIGITS * 4 or exponent * math.log10(base) > _MAX_DIGITS:  # ints past 1e308 have no float
      return math.inf
    exponent = base ** exponent
  return math.log10(exponent) if exponent else 0.0


def _too_complex(s: str) -> bool:
  """Whether `s` may take sympy minutes: deep nesting, huge integers, powers or factorials."""
  depth = deepest = 0
  for ch in s:
    if ch == "{":
      depth += 1
      deepest = max(deepest, depth)
    elif ch == "}":
      depth -= 1
  if deepest > _MAX_DEPTH or _HUGE_RE.search(s):
    return True
  return any(_power_digits(m.group()) > _MAX_DIGITS for m in _POWER_RE.finditer(s))


def _key(answer: str) -> object:
  """Two final answers are one when their MATH keys are equal (then math-verify is not asked)."""
  squashed = answer_normal.squashed(answer)
  number = answer_normal.as_number(squashed)
  return squashed if number is None else number


def _fast(answer: str, gold: str) -> str | None:
  """"exact" / "numeric" / "mismatch" when the string/number fast path decides, else None."""
  a_str, g_str = answer_normal.squashed(answer), answer_normal.squashed(gold)
  if a_str == g_str:
    return "exact"
  a_num, g_num = answer_normal.as_number(a_str), answer_normal.as_number(g_str)
  if a_num is None or g_num is None:
    return None
  if a_num == g_num:
    return "numeric"
  # Decimals still go to math-verify, which accepts 0.333333 for 1/3; distinct integers never match.
  return "mismatch" if a_num.denominator == 1 and g_num.denominator == 1 else None


# What math-verify is asked: (extracted, answers that must all equal gold, gold, several finals?).
_Job = tuple[str, tuple[str, ...], str, bool]


def _prejudge(response: str, truth: str, cfg: VerifierConfig, finished: bool = True) -> Verdict | _Job:
  """A final Verdict when no math-verify is needed, else the job for it.

  Every distinct final answer must equal the truth: "\\sqrt{8}" then "2\\sqrt{2}" is one answer,
  "5" then "6" a hedge (wrong, whichever matches). A truth that lists several answers ("3, 5")
  takes them as one list ("\\boxed{3} and \\boxed{5}").
  """
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
  stated = dict.fromkeys((*found.answers, *found.others))  # in order, repeats dropped
  if len(stated) > _MAX_FINALS and not several:
    return Verdict(False, extracted, "hedged")
  distinct = [answer_normal.canonical(a) for a in {_key(a): a for a in stated}.values()]
  candidates = [", ".join(distinct)] if several else distinct
  hedge = len(candidates) > 1
  if not several and any(answer_normal.has_alternatives(a) for a in stated):
    return Verdict(False, extracted, "hedged")
  fail = "hedged" if hedge else "mismatch"
  decided = [(c, _fast(c, gold)) for c in candidates]
  if any(reason == "mismatch" for _, reason in decided):
    return Verdict(False, extracted, fail)
  undecided = tuple(c for c, reason in decided if reason is None)
  if not undecided:
    return Verdict(True, extracted, decided[-1][1])
  if not cfg.math_verify:
    return Verdict(False, extracted, fail)
  if any(len(c) > cfg.max_answer_chars for c in undecided):
    return Verdict(False, extracted, "too_long")
  if _too_complex(gold) or any(_too_complex(c) for c in undecided):
    return Verdict(False, extracted, "too_complex")
  return extracted, undecided, gold, hedge


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


def _compare_all(compare: Compare, answers: tuple[str, ...], gold: str, hedge: bool) -> tuple[bool, str]:
  for answer in answers:
    try:
      ok = bool(compare(answer, gold))
    except Exception as e:  # a grading bug must cost one item, not the run
      return False, f"error: {type(e).__name__}: {e}"[:300]
    if not ok:
      return False, "hedged" if hedge else "mismatch"
  return True, "equivalent"


def grade(response: str, truth: str, cfg: VerifierConfig = VerifierConfig(),
          compare: Compare | None = None, finished: bool = True) -> Verdict:
  """Grade one response in this process, without a time bound (tests, debugging).

  finished: False when the response was cut off (no stop token): never correct."""
  pre = _prejudge(response, truth, cfg, finished)
  if isinstance(pre, Verdict):
    return pre
  extracted, *job = pre
  ok, reason = _compare_all(compare or math_verify_equal, *job)
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
    index, *args = job
    conn.send((index, *_compare_all(compare, *args)))


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
    jobs: dict[int, _Job] = {}
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

  def _run(self, jobs: dict[int, _Job], results: list[Verdict | None]) -> None:
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

  def _receive(self, w: _Worker, jobs: dict[int, _Job], results: list[Verdict | None]) -> None:
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
