"""Forgetting check: multiple-choice accuracy on a retain set, scored by choice log-likelihood.

Each question becomes a chat prompt; each choice a continuation (FORMATS: "<letter>. <choice>"
after the listed choices, or "The answer is <choice>." after the bare question), scored by the
sum of its token log-probs under the model (one batched, jitted forward over packed sequences;
logits only at the scored positions, padded vocabulary rows masked). The prediction is the
argmax; `accuracy_norm` uses the per-token mean instead (lm-eval's acc_norm in spirit).
Forgetting is the drop from a baseline tag's accuracy (METHOD.md 6).

Retain sets (files, the arith_mc generator, formats) are in retain_sets.py.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paced_jax import artifacts, mesh as mesh_lib, progress as progress_lib
from paced_jax.model import scoring as teacher_scoring
from paced_jax.model import tokenization
from paced_jax.config import ExperimentConfig, PromptConfig
from paced_jax.model.loaded import LoadedModel
from paced_jax.evaluation.retain_sets import FORMATS, LETTERS, ChoiceFormat, MCQuestion, load_retain_set

KIND = "eval_retain"
SUMMARY = "retain.json"
SCORES = "retain.scores.jsonl"
TOKENS_PER_BATCH = 8192   # input tokens per forward
SCORED_PER_BATCH = 2048   # scored positions per forward: bounds the [rows, N, V] float32 logits


# ---------------------------------------------------------------------------------------------
# Scoring.


def format_question(q: MCQuestion, fmt: ChoiceFormat) -> str:
  choices = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))
  return fmt.prompt.format(question=q.question, choices=choices)


def choice_sequences(tokenizer, questions: Sequence[MCQuestion], prompts: PromptConfig,
                     fmt: ChoiceFormat = FORMATS["letter"]) -> list[tuple[list[int], list[int]]]:
  """(context ids, continuation ids) per choice, questions in order, choices in order."""
  sequences = []
  for q in questions:
    context = tokenization.render_chat(tokenizer, format_question(q, fmt), prompts.system or None,
                                       prompts.enable_thinking)
    for i, choice in enumerate(q.choices):
      sequences.append((context, tokenizer.encode(fmt.continuation.format(letter=LETTERS[i], choice=choice),
                                                  add_special_tokens=False)))
  return sequences


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("valid_vocab",))
def target_logprobs(graphdef, params, tokens_BT, positions_BT, segment_ids_BT, where_BI, targets_BI, *,
                    valid_vocab: int):
  """log p(targets_BI[b, i] | row b up to position where_BI[b, i]): one forward, logits only there."""
  model = nnx.merge(graphdef, params)
  hidden_BTD = model(tokens_BT, positions_BT, segment_ids_BT)
  hidden_BID = jnp.take_along_axis(hidden_BTD, where_BI[..., None], axis=1)
  logits_BIV = model.logits(hidden_BID)
  V = logits_BIV.shape[-1]
  logits_BIV = jnp.where(jnp.arange(V) < valid_vocab, logits_BIV, -jnp.inf)  # padded rows are no tokens
  logp_BIV = jax.nn.log_softmax(logits_BIV, axis=-1)
  return jnp.take_along_axis(logp_BIV, targets_BI[..., None], axis=-1)[..., 0]


def sequence_logprobs(model: LoadedModel, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                      params=None, tokens_per_batch: int = TOKENS_PER_BATCH,
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(sum of continuation token log-probs f64 [N], continuation lengths int [N]) of each pair.

  Pairs are packed in order into rows (teacher_scoring.pack_sequences); every batch has the
  same shape [rows, length] x [rows, positions scored], so the forward compiles once.
  """
  counts = np.asarray([len(r) for _, r in sequences], np.int64)
  totals = np.zeros(len(sequences), np.float64)
  if not len(sequences):
    return totals, counts
  longest = max(len(c) + len(r) - 1 for c, r in sequences)
  length = max(128, 1 << (longest - 1).bit_length())
  packed = teacher_scoring.pack_sequences(sequences, length=length, pad_id=tokenization.pad_id(model.tokenizer))
  R = packed.tokens_BT.shape[0]
  by_row: list[list[int]] = [[] for _ in range(R)]
  for i, span in enumerate(packed.spans):
    if span.stop > span.start:
      by_row[span.row].append(i)
  scored = max(sum(packed.spans[i].stop - packed.spans[i].start for i in row) for row in by_row)
  N = max(8, 1 << (scored - 1).bit_length())
  ways = model.mesh.shape["data"] * model.mesh.shape["fsdp"]
  batch_rows = ways * max(1, min(tokens_per_batch // length, SCORED_PER_BATCH // N) // ways)
  sharding = mesh_lib.batch_sharding(model.mesh, 2)
  params = params if params is not None else model.params
  for first in progress_lib.bar(range(0, R, batch_rows), desc="retain scoring", unit="batch", disable=not progress,
                                leave=False):
    rows = range(first, min(first + batch_rows, R))
    inputs = []
    for x in (packed.tokens_BT, packed.positions_BT, packed.segment_ids_BT):
      block = np.zeros((batch_rows, length), np.int32)
      block[:len(rows)] = x[rows.start:rows.stop]
      inputs.append(block)
    where, targets = np.zeros((batch_rows, N), np.int32), np.zeros((batch_rows, N), np.int32)
    for rb, r in enumerate(rows):
      at = 0
      for i in by_row[r]:
        _, a, z = packed.spans[i]
        where[rb, at:at + z - a] = np.arange(a, z)
        targets[rb, at:at + z - a] = packed.targets_BT[r, a:z]
        at += z - a
    arrays = (mesh_lib.from_host(x, sharding) for x in (*inputs, where, targets))
    logp = mesh_lib.to_host(target_logprobs(model.graphdef, params, *arrays,
                                            valid_vocab=model.valid_vocab)).astype(np.float64)
    for rb, r in enumerate(rows):
      at = 0
      for i in by_row[r]:
        totals[i] = logp[rb, at:at + counts[i]].sum()
        at += counts[i]
  return totals, counts


def score(model: LoadedModel, questions: Sequence[MCQuestion], prompts: PromptConfig,
          fmt: ChoiceFormat = FORMATS["letter"], *, params=None, progress: bool = True) -> list[dict]:
  """Per question: id, answer, predicted (argmax of summed log-prob), predicted_norm, logliks, tokens."""
  totals, counts = sequence_logprobs(model, choice_sequences(model.tokenizer, questions, prompts, fmt), params=params,
                                     progress=progress)
  records, at = [], 0
  for q in questions:
    ll, n = totals[at:at + len(q.choices)], counts[at:at + len(q.choices)]
    at += len(q.choices)
    records.append({"id": q.id, "answer": q.answer, "predicted": int(np.argmax(ll)),
                    "predicted_norm": int(np.argmax(ll / np.maximum(n, 1))), "logliks": ll.tolist(),
                    "tokens": n.tolist()})
  return records


def forgetting(before_acc: float, after_acc: float) -> dict:
  """Accuracy drop: `points` = 100 (before - after); `relative_drop` = (before - after) / before."""
  drop = before_acc - after_acc
  return {"before": before_acc, "after": after_acc, "points": 100.0 * drop,
          "relative_drop": drop / before_acc if before_acc > 0 else None}


# ---------------------------------------------------------------------------------------------
# The stage: WORKDIR/eval/<tag>/retain.json (+ retain.scores.jsonl).


def summarize(records: Sequence[dict], questions: Sequence[MCQuestion]) -> dict:
  hits = np.asarray([r["predicted"] == r["answer"] for r in records], np.float64)
  n = hits.size
  return {"n_questions": n, "accuracy": float(hits.mean()) if n else None,
          "se": float(hits.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
          "accuracy_norm": float(np.mean([r["predicted_norm"] == r["answer"] for r in records])) if n else None,
          "chance": float(np.mean([1 / len(q.choices) for q in questions])) if n else None}


def run(cfg: ExperimentConfig, model: LoadedModel, *, directory: str, tag: str, fingerprint: str, params=None,
        baseline_directory: str | None = None) -> dict:
  """Score (or reuse) cfg.eval.retain_set into `directory`; add forgetting vs `baseline_directory`."""
  spec = cfg.eval.retain_set
  questions, source, fmt_name = load_retain_set(spec)
  fmt = FORMATS[fmt_name]
  expected = {"retain_set": spec, "source": source, "tag": tag, "model_fingerprint": fingerprint,
              "format": fmt_name, "prompt": fmt.prompt, "continuation": fmt.continuation, "system": cfg.prompts.system,
              "enable_thinking": cfg.prompts.enable_thinking}
  path, scores_path = os.path.join(directory, SUMMARY), os.path.join(directory, SCORES)
  if os.path.exists(path):
    summary = artifacts.read_json(path)
    artifacts.expect_fields(path, summary, {"schema_version": artifacts.SCHEMA_VERSION, "kind": KIND, **expected})
    if not os.path.exists(scores_path) or artifacts.sha256_file(scores_path) != summary.get("scores_sha256"):
      raise artifacts.ArtifactError(f"{scores_path}: missing or does not match the checksum in {path} "
                                    "(modified or corrupted; delete both to score again)")
  else:
    records = score(model, questions, cfg.prompts, fmt, params=params)
    with artifacts.atomic_open(scores_path) as f:
      for r in records:
        f.write(json.dumps(r, sort_keys=True) + "\n")
    summary = {"schema_version": artifacts.SCHEMA_VERSION, "kind": KIND, **expected,
               **summarize(records, questions), "scores_sha256": artifacts.sha256_file(scores_path),
               "forgetting": None}
    artifacts.write_json(path, summary)
  drop = _forgetting_vs(baseline_directory, directory, summary)
  if drop != summary.get("forgetting"):
    summary["forgetting"] = drop
    artifacts.write_json(path, summary)
  return summary


def _forgetting_vs(baseline_directory: str | None, directory: str, summary: dict) -> dict | None:
  """Forgetting relative to the baseline's retain.json, if it scored the same questions the same way."""
  if not baseline_directory or os.path.abspath(baseline_directory) == os.path.abspath(directory):
    return None
  path = os.path.join(baseline_directory, SUMMARY)
  if not os.path.exists(path):
    return None
  base = artifacts.read_json(path)
  same = ("retain_set", "source", "format", "prompt", "continuation", "system", "enable_thinking")
  if any(base.get(k) != summary.get(k) for k in same) or base.get("accuracy") is None or summary["accuracy"] is None:
    return None
  return {**forgetting(base["accuracy"], summary["accuracy"]), "baseline_tag": base.get("tag")}
