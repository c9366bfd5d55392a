"""Reference stage: one teacher response per training problem -> WORKDIR/references/.

The teacher answers its own prompt (with privileged context when configured), so in
self-distillation the reference is what the answer-aware initial student writes. Responses can
be filtered to verified-correct ones; what was dropped is counted in the manifest.
"""

from __future__ import annotations

import os

from paced_jax import artifacts
from paced_jax.problems import prompts as prompts_lib
from paced_jax.config import ExperimentConfig, to_json
from paced_jax.model.loaded import LoadedModel
from paced_jax.evaluation.pass_rate import problem_key
from paced_jax.problems.prepare import read_problems
from paced_jax.evaluation.verifier import Grader
from paced_jax.sampling.sampler import Sampler

KIND = "references"
RECORDS = "references.jsonl"
CHUNK_PROBLEMS = 64


def directory(workdir: str) -> str:
  return os.path.join(workdir, "references")


def expected_settings(cfg: ExperimentConfig, teacher: LoadedModel) -> dict:
  problems_sha = artifacts.read_manifest(os.path.join(cfg.workdir, "problems"), "problems")["checksums"]["train.jsonl"]
  return {"teacher_fingerprint": teacher.fingerprint, "sampling": cfg.reference.sampling.identity(),
          "prompts": to_json(cfg.prompts), "verified_only": cfg.reference.verified_only,
          "problems_sha256": problems_sha}


def run(cfg: ExperimentConfig, teacher: LoadedModel) -> str:
  out = directory(cfg.workdir)
  expected = expected_settings(cfg, teacher)
  if os.path.exists(os.path.join(out, artifacts.MANIFEST)):
    artifacts.expect_fields(os.path.join(out, artifacts.MANIFEST), artifacts.read_manifest(out, KIND), expected)
    return out
  problems = read_problems(cfg.workdir, "train")
  sampling = cfg.reference.sampling
  if sampling.num_samples != 1:
    raise ValueError(f"config.reference.sampling.num_samples is {sampling.num_samples}; a reference is one response")
  sampler = Sampler.for_model(teacher)
  tok = teacher.tokenizer

  def compute(chunk):
    prompt_ids = [prompts_lib.teacher_prompt(tok, p, cfg.prompts) for p in chunk]
    rollouts = sampler.generate(prompt_ids, sampling, prompt_keys=[problem_key(p.id) for p in chunk],
                                progress="references")
    texts = [tok.decode(r[0].tokens, skip_special_tokens=True) for r in rollouts]
    verdicts = grader.grade_many(texts, [p.answer for p in chunk], [r[0].finished for r in rollouts])
    return [{"id": p.id, "response_ids": r[0].tokens.tolist(), "text": t, "finished": r[0].finished,
             "verified": v.correct} for p, r, t, v in zip(chunk, rollouts, texts, verdicts)]

  chunks = [problems[i:i + CHUNK_PROBLEMS] for i in range(0, len(problems), CHUNK_PROBLEMS)]
  with Grader(cfg.verifier) as grader:
    path = artifacts.write_jsonl_in_parts(out, RECORDS, chunks, compute, expected, desc="references")
  records = artifacts.read_jsonl_lines(path)
  verified = sum(r["verified"] for r in records)
  artifacts.write_manifest(out, KIND, **expected, counts={"problems": len(records), "verified": verified},
                           checksums={RECORDS: artifacts.sha256_file(path)})
  print(f"references: {len(records)} responses, {verified} verified correct")
  return out


def read(workdir: str) -> dict[str, dict]:
  """References by problem id (verified-only filtering is applied by the caller's config)."""
  return {r["id"]: r for r in artifacts.read_jsonl_checked(directory(workdir), RECORDS, KIND)}


def usable(cfg: ExperimentConfig, references: dict[str, dict]) -> dict[str, dict]:
  """The references training may use: non-empty, and verified when so configured."""
  return {pid: r for pid, r in references.items()
          if r["response_ids"] and (r["verified"] or not cfg.reference.verified_only)}
