"""Evaluate stage: mean@k accuracy on each benchmark (+ retain set) -> WORKDIR/eval/<tag>/.

Per benchmark `<name>.json` (summary) and `<name>.responses.jsonl` (one record per problem);
`retain.json` for the forgetting check (retain.py); `manifest.json` indexes what the tag holds.
Problems are sampled in chunks written atomically under `parts-<name>/`, so a killed run redoes
at most one chunk; samples are keyed by problem id, so the resumed result is the same. A
complete result with the same settings is reused; one with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paced_jax import workspace
from paced_jax import artifacts, progress as progress_lib
from paced_jax.evaluation import benchmarks as benchmarks_lib
from paced_jax.problems import prompts as prompts_lib
from paced_jax.evaluation import retain, rollouts
from paced_jax.config import ExperimentConfig
from paced_jax.config_dict import to_json
from paced_jax.model.loaded import LoadedModel
from paced_jax.problems.records import Problem
from paced_jax.evaluation.verifier import Grader

KIND = "eval"
SUMMARY_KIND = "eval_benchmark"
CHUNK_PROBLEMS = 64
BASELINE_TAG = "initial"   # forgetting is measured against this tag's retain accuracy
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def mean_at_k(correct: Sequence[int], k: int) -> tuple[float | None, float | None]:
  """(mean over problems of correct/k, its standard error std(ddof=1)/sqrt(n)); None where undefined."""
  p = np.asarray(correct, np.float64) / k
  if p.size == 0:
    return None, None
  se = float(np.std(p, ddof=1) / math.sqrt(p.size)) if p.size > 1 else None
  return float(p.mean()), se


def params_fingerprint(params: nnx.State) -> str:
  """Identity of parameters from per-array sums and absolute sums, reduced on device.

  Equal parameters on the same mesh give equal fingerprints; a different mesh may sum in
  another order, so pass an explicit fingerprint (e.g. the checkpoint's) where that matters.
  """
  leaves = jax.tree.leaves(params)
  stats = jax.jit(lambda ls: jnp.stack([jnp.stack([jnp.sum(x.astype(jnp.float32)),
                                                    jnp.sum(jnp.abs(x.astype(jnp.float32)))]) for x in ls]))(leaves)
  return artifacts.fingerprint([[f"{v:.6e}" for v in row] for row in np.asarray(jax.device_get(stats)).tolist()])


def _identity(cfg: ExperimentConfig, bench: benchmarks_lib.Benchmark, tag: str, fingerprint: str) -> dict:
  """The settings that determine a benchmark's result (what a reused result must match)."""
  return {"benchmark": bench.name, "source": bench.identity, "tag": tag, "model_fingerprint": fingerprint,
          "k": cfg.eval.sampling.num_samples, "sampling": cfg.eval.sampling.identity(),
          "greedy": cfg.eval.greedy_pass1, "verifier_extract": list(cfg.verifier.extract),
          "prompts": to_json(cfg.prompts)}


def _chunk_records(model: LoadedModel, params, problems: Sequence[Problem], cfg: ExperimentConfig,
                   grader: Grader, prompt_len: int, sampler) -> list[dict]:
  sampling = cfg.eval.sampling
  K = sampling.num_samples
  prompt_ids = [prompts_lib.student_prompt(model.tokenizer, p, cfg.prompts) for p in problems]
  graded = rollouts.sample_and_grade(model, params, problems, prompt_ids, sampling, grader, progress="eval samples",
                                     prompt_len=prompt_len, sampler=sampler)
  greedy = [None] * len(problems)
  if cfg.eval.greedy_pass1:
    greedy_cfg = dataclasses.replace(sampling, greedy=True, num_samples=1)
    greedy = rollouts.sample_and_grade(model, params, problems, prompt_ids, greedy_cfg, grader, progress="eval greedy",
                                      prompt_len=prompt_len, sampler=sampler)
  records = []
  for problem, g, g1 in zip(problems, graded, greedy):
    record = {"id": problem.id, "truth": problem.answer, "k": K, "correct": g.correct,
              "verdicts": [v.correct for v in g.verdicts], "extracted": [v.extracted for v in g.verdicts],
              "responses": g.texts, "lengths": g.lengths, "finished": g.finished}
    if g1 is not None:
      record.update(greedy_response=g1.texts[0], greedy_extracted=g1.verdicts[0].extracted,
                    greedy_correct=bool(g1.verdicts[0].correct))
    records.append(record)
  return records


def summarize(records: Sequence[dict], k: int, greedy: bool) -> dict:
  """The result fields of a benchmark summary, from its per-problem records."""
  correct = [r["correct"] for r in records]
  accuracy, se = mean_at_k(correct, k)
  lengths = [n for r in records for n in r["lengths"]]
  greedy_pass1 = float(np.mean([r["greedy_correct"] for r in records])) if greedy and records else None
  return {"n_problems": len(records), "accuracy": accuracy, "se": se, "greedy_pass1": greedy_pass1,
          "histogram": np.bincount(np.asarray(correct, np.int64), minlength=k + 1).tolist(),
          "mean_response_tokens": float(np.mean(lengths)) if lengths else None,
          "truncated_fraction": float(np.mean([not f for r in records for f in r["finished"]])) if lengths else None}


def _read_summary(path: str, expected: dict) -> dict:
  summary = artifacts.read_json(path)
  if not isinstance(summary, dict) or summary.get("kind") != SUMMARY_KIND:
    raise artifacts.ArtifactError(f"{path}: not an evaluation summary (field 'kind' is "
                                  f"{summary.get('kind') if isinstance(summary, dict) else None!r})")
  artifacts.expect_fields(path, summary, {"schema_version": artifacts.SCHEMA_VERSION, **expected})
  responses = path.removesuffix(".json") + ".responses.jsonl"
  if not os.path.exists(responses) or artifacts.sha256_file(responses) != summary.get("responses_sha256"):
    raise artifacts.ArtifactError(f"{responses}: missing or does not match the checksum in {path} "
                                  "(modified or corrupted; delete both to evaluate again)")
  return summary


def run_benchmark(cfg: ExperimentConfig, model: LoadedModel, bench: benchmarks_lib.Benchmark, *, tag: str,
                  fingerprint: str, params=None, grader: Grader | None = None) -> dict:
  """Evaluate (or resume, or reuse) one benchmark; returns its summary."""
  directory = workspace.eval_dir(cfg.workdir, tag)
  summary_path = os.path.join(directory, f"{bench.name}.json")
  responses_path = responses_file(directory, bench.name)
  expected = _identity(cfg, bench, tag, fingerprint)
  if os.path.exists(summary_path):
    return _read_summary(summary_path, expected)

  parts_dir = os.path.join(directory, f"parts-{bench.name}")
  problems = bench.problems
  prompt_len = rollouts.check_prompts(model, problems, lambda tok, p: prompts_lib.student_prompt(tok, p, cfg.prompts),
                                      cfg.eval.sampling, "eval.sampling")
  os.makedirs(parts_dir, exist_ok=True)
  settings_path = os.path.join(parts_dir, "settings.json")
  if os.path.exists(settings_path):
    # Parts of a killed run are only reused if they were made with the same settings.
    artifacts.expect_fields(settings_path, artifacts.read_json(settings_path), expected)
  else:
    artifacts.write_json(settings_path, expected)
  chunks = [problems[i:i + CHUNK_PROBLEMS] for i in range(0, len(problems), CHUNK_PROBLEMS)]
  params = params if params is not None else model.params
  sampler = rollouts.sampler_for(model, params)  # one copy of the weights for every chunk
  own_grader = grader is None
  grader = Grader(cfg.verifier) if own_grader else grader
  try:
    for c, chunk in enumerate(progress_lib.bar(chunks, desc=f"eval {tag}/{bench.name}", unit="chunk")):
      part = os.path.join(parts_dir, f"part-{c:05d}.jsonl")
      if os.path.exists(part):
        continue
      records = _chunk_records(model, params, chunk, cfg, grader, prompt_len, sampler)
      with artifacts.atomic_open(part) as f:
        for r in records:
          f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
  finally:
    if own_grader:
      grader.close()

  with artifacts.atomic_open(responses_path) as out:
    for c in range(len(chunks)):
      with open(os.path.join(parts_dir, f"part-{c:05d}.jsonl")) as f:
        out.write(f.read())
  records = read_responses(responses_path)
  summary = {"schema_version": artifacts.SCHEMA_VERSION, "kind": SUMMARY_KIND, **expected,
             **summarize(records, cfg.eval.sampling.num_samples, cfg.eval.greedy_pass1),
             "responses_sha256": artifacts.sha256_file(responses_path)}
  artifacts.write_json(summary_path, summary)  # last: its presence marks the result complete
  shutil.rmtree(parts_dir)
  return summary


def responses_file(directory: str, benchmark: str) -> str:
  return os.path.join(directory, f"{benchmark}.responses.jsonl")


def read_responses(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _model_fingerprint(model: LoadedModel, params, fingerprint: str | None) -> str:
  if fingerprint is not None:
    return fingerprint
  if params is None or params is model.params:
    return model.fingerprint
  return f"{model.fingerprint}+params:{params_fingerprint(params)}"


def evaluate(cfg: ExperimentConfig, model: LoadedModel, *, params: nnx.State | None = None, tag: str,
             fingerprint: str | None = None) -> dict:
  """Evaluate every cfg.eval benchmark and the retain set under eval/<tag>/; returns the tag's index.

  `params` (default: the loaded ones) and `fingerprint` (default: derived) give another state
  of the same model, e.g. a training checkpoint. Returns {"tag", "model_fingerprint",
  "benchmarks": {name: summary}, "retain": retain summary or None}, also written to manifest.json,
  and "new": the benchmark names (and "retain") that the tag's manifest did not list before this call.
  """
  if not _TAG_RE.match(tag):
    raise ValueError(f"tag {tag!r} is not a plain directory name (letters, digits, _.+-)")
  fingerprint = _model_fingerprint(model, params, fingerprint)
  directory = workspace.eval_dir(cfg.workdir, tag)
  previous = {}
  if os.path.exists(os.path.join(directory, artifacts.MANIFEST)):
    previous = artifacts.read_manifest(directory, KIND)
    artifacts.expect_fields(os.path.join(directory, artifacts.MANIFEST), previous,
                            {"tag": tag, "model_fingerprint": fingerprint})
  benches = benchmarks_lib.load_benchmarks(cfg.eval.benchmarks, cfg.workdir)  # bad files fail before sampling
  results = {}
  with Grader(cfg.verifier) as grader:
    for bench in benches:
      results[bench.name] = run_benchmark(cfg, model, bench, tag=tag, fingerprint=fingerprint, params=params,
                                          grader=grader)
  retain_summary = None
  if cfg.eval.retain_set:
    retain_summary = retain.run(cfg, model, directory=directory, tag=tag, fingerprint=fingerprint, params=params,
                                baseline_directory=workspace.eval_dir(cfg.workdir, BASELINE_TAG))
  index = {name: {k: s[k] for k in ("accuracy", "se", "k", "n_problems", "greedy_pass1")}
           for name, s in {**previous.get("benchmarks", {}), **results}.items()}
  retain_index = previous.get("retain")
  if retain_summary is not None:
    retain_index = {k: retain_summary.get(k) for k in ("retain_set", "accuracy", "n_questions", "forgetting")}
  artifacts.write_manifest(directory, KIND, tag=tag, model_fingerprint=fingerprint, benchmarks=index,
                           retain=retain_index)
  # What the manifest listed before was returned (and logged) by an earlier call; a call killed before its
  # manifest listed nothing, so what it finished counts as new here.
  new = [name for name in results if name not in previous.get("benchmarks", {})]
  new += ["retain"] if retain_summary is not None and not previous.get("retain") else []
  return {"tag": tag, "model_fingerprint": fingerprint, "benchmarks": results, "retain": retain_summary, "new": new}


def format_table(result: dict) -> str:
  """A plain-text table: benchmark, mean@k +- SE (in %), n; then the retain line."""
  pct = lambda x: "-" if x is None else f"{100 * x:.1f}"
  rows = [("benchmark", "mean@k ± SE (%)", "greedy (%)", "n")]
  for name, s in result["benchmarks"].items():
    rows.append((name, f"{pct(s['accuracy'])} ± {pct(s['se'])} (k={s['k']})", pct(s["greedy_pass1"]),
                 str(s["n_problems"])))
  r = result.get("retain")
  if r:
    drop = r.get("forgetting")
    note = "" if not drop else f"  (drop vs {drop['baseline_tag']}: {drop['points']:.1f} points)"
    rows.append((f"retain ({r['retain_set']})", f"{pct(r['accuracy'])} ± {pct(r['se'])}{note}", "", str(r["n_questions"])))
  widths = [max(len(row[i]) for row in rows) for i in range(4)]
  line = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
  return "\n".join([line(rows[0]), line(tuple("-" * w for w in widths))] + [line(row) for row in rows[1:]])
