"""Reference stage: one teacher response per training problem -> WORKDIR/references/.

The teacher answers its own prompt (with privileged context when configured), so in
self-distillation the reference is what the answer-aware initial student writes. Responses can
be filtered to verified-correct ones; what was dropped is counted in the manifest.
"""

from __future__ import annotations

import os

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax.problems import prompts as prompts_lib
from paced_jax.config import ExperimentConfig
from paced_jax.config_dict import to_json
from paced_jax.model.loaded import LoadedModel
from paced_jax.evaluation import rollouts
from paced_jax.problems.prepare import read_problems
from paced_jax.evaluation.verifier import Grader

KIND = "references"
RECORDS = "references.jsonl"
CHUNK_PROBLEMS = 64


def expected_settings(cfg: ExperimentConfig, teacher: LoadedModel) -> dict:
  problems_sha = artifacts.read_manifest(workspace.problems_dir(cfg.workdir), "problems")["checksums"]["train.jsonl"]
  return {"teacher_fingerprint": teacher.fingerprint, "sampling": cfg.reference.sampling.identity(),
          "prompts": to_json(cfg.prompts), "verified_only": cfg.reference.verified_only,
          "problems_sha256": problems_sha}


def run(cfg: ExperimentConfig, teacher: LoadedModel) -> str:
  out = workspace.references_dir(cfg.workdir)
  expected = expected_settings(cfg, teacher)
  if os.path.exists(os.path.join(out, artifacts.MANIFEST)):
    artifacts.expect_fields(os.path.join(out, artifacts.MANIFEST), artifacts.read_manifest(out, KIND), expected)
    return out
  problems = read_problems(cfg.workdir, "train")
  sampling = cfg.reference.sampling
  if sampling.num_samples != 1:
    raise ValueError(f"config.reference.sampling.num_samples is {sampling.num_samples}; a reference is one response")
  def compute(chunk):
    prompt_ids = [prompts_lib.teacher_prompt(teacher.tokenizer, p, cfg.prompts) for p in chunk]
    graded = rollouts.sample_and_grade(teacher, None, chunk, prompt_ids, sampling, grader, progress="references",
                                         prompt_len=prompt_len, sampler=sampler)
    return [{"id": p.id, "response_ids": g.token_ids[0].tolist(), "text": g.texts[0], "finished": g.finished[0],
             "verified": g.verdicts[0].correct} for p, g in zip(chunk, graded)]

  prompt_len = rollouts.check_prompts(teacher, problems, lambda tok, p: prompts_lib.teacher_prompt(tok, p, cfg.prompts),
                                      sampling, "reference.sampling")
  chunks = [problems[i:i + CHUNK_PROBLEMS] for i in range(0, len(problems), CHUNK_PROBLEMS)]
  sampler = rollouts.sampler_for(teacher)  # one copy of the weights for every chunk
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
  return {r["id"]: r for r in artifacts.read_jsonl_checked(workspace.references_dir(workdir), RECORDS, KIND)}


def usable(cfg: ExperimentConfig, references: dict[str, dict]) -> dict[str, dict]:
  """The references training may use: non-empty, and verified when so configured."""
  return {pid: r for pid, r in references.items()
          if r["response_ids"] and (r["verified"] or not cfg.reference.verified_only)}
