"""Pass-rate stage: K student rollouts per training problem, graded -> WORKDIR/pass_rates/<round>/.

Problems are processed in fixed chunks; each finished chunk is written atomically under
`parts/`, so a killed run redoes at most one chunk. Rollout randomness is keyed by problem id
(sampler.py), so a resumed run writes byte-for-byte the file an uninterrupted run writes.
"""

from __future__ import annotations

import glob
import hashlib
import os
from typing import Sequence

import numpy as np
from flax import nnx

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax.problems import prompts as prompts_lib
from paced_jax.config import ExperimentConfig
from paced_jax.config_dict import to_json
from paced_jax.model.loaded import LoadedModel
from paced_jax.problems.prepare import read_problems
from paced_jax.problems.records import Problem
from paced_jax.evaluation import rollouts
from paced_jax.evaluation.verifier import Grader

KIND = "pass_rates"
RECORDS = "pass_rates.jsonl"
CHUNK_PROBLEMS = 32


def _expected(cfg: ExperimentConfig, student: LoadedModel, round_: int, problems_sha: str) -> dict:
  pr = cfg.pass_rate
  return {"round": round_, "student_fingerprint": student.fingerprint, "K": pr.sampling.num_samples,
          "sampling": pr.sampling.identity(), "verifier_extract": list(cfg.verifier.extract),
          "prompts": to_json(cfg.prompts), "problems_sha256": problems_sha}


def _chunk_records(student: LoadedModel, params, problems: Sequence[Problem], cfg: ExperimentConfig,
                   grader: Grader, prompt_len: int, sampler) -> list[dict]:
  pr = cfg.pass_rate
  prompt_ids = [prompts_lib.student_prompt(student.tokenizer, p, cfg.prompts) for p in problems]
  graded = rollouts.sample_and_grade(student, params, problems, prompt_ids, pr.sampling, grader, progress="rollouts",
                                     prompt_len=prompt_len, sampler=sampler)
  R = pr.sampling.num_samples
  return [{"id": problem.id, "K": R, "correct": g.correct, "p": g.correct / R, "lengths": g.lengths,
           "finished": g.finished, "extracted": [v.extracted for v in g.verdicts],
           "responses": g.texts[:pr.keep_responses]} for problem, g in zip(problems, graded)]


def histogram(correct: Sequence[int], K: int) -> list[int]:
  return np.bincount(np.asarray(correct, np.int64), minlength=K + 1).tolist()


def format_histogram(counts: Sequence[int], width: int = 40) -> str:
  K = len(counts) - 1
  top = max(max(counts), 1)
  return "\n".join(f"  p={c / K:5.3f} ({c}/{K}) {n:6d} {'#' * round(width * n / top)}" for c, n in enumerate(counts))


def run(cfg: ExperimentConfig, student: LoadedModel, *, round_: int = 0, params: nnx.State | None = None,
        fingerprint: str | None = None, problems: Sequence[Problem] | None = None) -> str:
  """Write (or resume, or reuse) `pass_rates/<round>/`; returns its directory.

  `params` / `fingerprint` give the current student for recomputation rounds; by default the
  loaded (initial) student is used. `problems`: only these training problems (a one-pass run's
  recompute covers the problems it has not drawn yet); default all.
  """
  directory = workspace.pass_rates_dir(cfg.workdir, round_)
  problems_sha = artifacts.read_manifest(workspace.problems_dir(cfg.workdir), "problems")["checksums"]["train.jsonl"]
  expected = _expected(cfg, student, round_, problems_sha)
  if problems is None:
    problems = read_problems(cfg.workdir, "train")
  else:
    expected["subset_sha256"] = hashlib.sha256("\n".join(p.id for p in problems).encode()).hexdigest()
  if fingerprint is not None:
    expected["student_fingerprint"] = fingerprint
  if os.path.exists(os.path.join(directory, artifacts.MANIFEST)):
    manifest = artifacts.read_manifest(directory, KIND)
    artifacts.expect_fields(os.path.join(directory, artifacts.MANIFEST), manifest, expected)
    return directory

  prompt_len = rollouts.check_prompts(student, problems, lambda tok, p: prompts_lib.student_prompt(tok, p, cfg.prompts),
                                      cfg.pass_rate.sampling, "pass_rate.sampling")
  chunks = [problems[i:i + CHUNK_PROBLEMS] for i in range(0, len(problems), CHUNK_PROBLEMS)]
  current = params if params is not None else student.params
  sampler = rollouts.sampler_for(student, current)
  with Grader(cfg.verifier) as grader:
    records_path = artifacts.write_jsonl_in_parts(
        directory, RECORDS, chunks, lambda chunk: _chunk_records(student, current, chunk, cfg, grader, prompt_len, sampler),
        expected,
        desc=f"pass rates (round {round_})")
  records = read_records(directory, check=False)
  K = cfg.pass_rate.sampling.num_samples
  counts = histogram([r["correct"] for r in records], K)
  artifacts.write_manifest(directory, KIND, **expected, counts={"problems": len(records)}, histogram=counts,
                           mean_p=float(np.mean([r["p"] for r in records])) if records else 0.0,
                           checksums={RECORDS: artifacts.sha256_file(records_path)})
  print(f"pass rates (round {round_}) of {len(records)} problems, K={K}:\n{format_histogram(counts)}")
  return directory


def read_records(directory: str, check: bool = True) -> list[dict]:
  """The per-problem records; with `check`, the manifest and checksum are verified first."""
  if check:
    return artifacts.read_jsonl_checked(directory, RECORDS, KIND)
  return artifacts.read_jsonl_lines(os.path.join(directory, RECORDS))


def latest_round(workdir: str) -> int | None:
  done = sorted(glob.glob(os.path.join(workspace.pass_rates_root(workdir), "*", artifacts.MANIFEST)))
  return int(os.path.basename(os.path.dirname(done[-1]))) if done else None
