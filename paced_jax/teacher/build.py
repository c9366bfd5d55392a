"""The teacher stage: score reference (or any) responses with the teacher and write the store.

Shards hold a fixed number of consecutive problems and each is a deterministic function of its
problems and the settings, so a killed build that is rerun keeps its finished shards (each was
renamed into place whole), redoes the rest, and ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from paced_jax import artifacts, progress as progress_lib
from paced_jax.config import TeacherSignalConfig
from paced_jax.model import scoring as teacher_scoring
from paced_jax.teacher import store as store_lib

BUILD = "build.json"  # an unfinished build's identity, so that a rerun can refuse other settings


class TeacherItem(NamedTuple):
  problem_id: str
  prompt_ids: Sequence[int]  # the teacher's prompt (with any privileged context), rendered
  response_ids: Sequence[int]


@dataclasses.dataclass(frozen=True)
class StoreConfig:
  """How a store is built: the experiment's teacher_signal settings, the softmax temperature (the
  training temperature: stored log-probs must be at the one the loss uses), and a fixed row length
  (None: each shard's longest sequence, rounded up to a power of 2)."""
  signal: TeacherSignalConfig = TeacherSignalConfig()
  temperature: float = 1.0
  row_length: int | None = None


def inputs_fingerprint(items: Sequence[TeacherItem]) -> str:
  """Hash of the ordered (id, prompt ids, response ids) list a store is computed from."""
  h = hashlib.sha256()
  for pid, prompt, response in items:
    for part in (str(pid).encode(), np.asarray(prompt, "<i4").tobytes(), np.asarray(response, "<i4").tobytes()):
      h.update(len(part).to_bytes(8, "little") + part)
  return h.hexdigest()[:16]


def read_items(path: str, tokenizer=None) -> list[TeacherItem]:
  """Teacher inputs from a JSONL file: `id`, `response_ids`, and `teacher_prompt_ids` or `teacher_prompt`.

  A `teacher_prompt` text is used verbatim (render any chat template first) and tokenized with
  `tokenizer`, adding no special tokens.
  """
  items = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}: line {lineno}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
      if not isinstance(row, dict) or not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool):
        raise ValueError(f"{where}: expected an object with a string or integer 'id'")
      if "teacher_prompt_ids" in row:
        prompt = row["teacher_prompt_ids"]
      elif isinstance(row.get("teacher_prompt"), str):
        if tokenizer is None:
          raise ValueError(f"{where}: 'teacher_prompt' is text, but no tokenizer was given to tokenize it")
        prompt = tokenizer.encode(row["teacher_prompt"], add_special_tokens=False)
      else:
        raise ValueError(f"{where}: needs 'teacher_prompt_ids' (a list of ints) or 'teacher_prompt' (text)")
      for name, ids in (("teacher_prompt_ids", prompt), ("response_ids", row.get("response_ids"))):
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
          raise ValueError(f"{where}: field {name!r} must be a list of integers")
      items.append(TeacherItem(str(row["id"]), prompt, row["response_ids"]))
  return items


def _check_items(items: Sequence[TeacherItem], vocab_size: int) -> list[TeacherItem]:
  items = [TeacherItem(*item) for item in items]
  seen: set[str] = set()
  for pid, prompt, response in items:
    if not isinstance(pid, str):
      raise ValueError(f"problem id {pid!r}: expected a string")
    if pid in seen:
      raise ValueError(f"problem id {pid!r} appears twice in the teacher inputs")
    if len(prompt) == 0:
      raise ValueError(f"problem {pid!r}: empty teacher prompt")
    ids = np.concatenate([np.asarray(prompt, np.int64), np.asarray(response, np.int64)])
    if ids.min() < 0 or ids.max() >= vocab_size:
      raise ValueError(f"problem {pid!r}: token ids must lie in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
    seen.add(pid)
  return items


def _row_length(items: Sequence[TeacherItem], cfg: StoreConfig) -> int:
  if cfg.row_length is not None:
    return cfg.row_length
  longest = max(len(p) + len(r) - 1 for _, p, r in items)
  return max(16, 1 << (longest - 1).bit_length())  # few distinct lengths: few compiles


def build_store(directory: str, items: Sequence[TeacherItem], *, teacher, mesh, teacher_fingerprint: str,
                tokenizer_fingerprint: str, vocab_size: int, cfg: StoreConfig = StoreConfig(), pad_id: int = 0,
                progress: bool = True, after_batch: Callable[[int], None] | None = None) -> dict:
  """Score every (problem id, teacher prompt ids, response ids) and write the store; resumes.

  `teacher` is `(model_cfg, graphdef, params)` from `hf_checkpoint.load_model` on `mesh`;
  `vocab_size` is the tokenizer's (`tokenization.valid_vocab_size`): rows from there on are
  padding. A finished store with the same identity is reused as is; one with another identity,
  finished or not, is refused, naming the field. `after_batch(batches_done)` runs after each
  scored batch (tests kill a build from it). Every process scores; process 0 writes (a shared
  filesystem is assumed). Returns the manifest.
  """
  model_cfg, graphdef, params = teacher
  items = _check_items(items, vocab_size)
  identity = dict(teacher_fingerprint=teacher_fingerprint, tokenizer_fingerprint=tokenizer_fingerprint, k=cfg.signal.top_k,
                  vocab_size=vocab_size, logprob_dtype=cfg.signal.logprob_dtype, temperature=cfg.temperature,
                  teacher_compute_dtype=model_cfg.compute_dtype, inputs_fingerprint=inputs_fingerprint(items))
  manifest_path = os.path.join(directory, artifacts.MANIFEST)
  writer = jax.process_index() == 0
  if os.path.exists(manifest_path):
    manifest = artifacts.read_manifest(directory, store_lib.KIND)
    artifacts.expect_fields(manifest_path, manifest, identity)
    store_lib.TeacherStore(directory, verify="none")  # the index and the shard sizes are intact
    return manifest
  if cfg.row_length is not None:
    for pid, prompt, response in items:
      if len(prompt) + len(response) - 1 > cfg.row_length:
        raise ValueError(f"problem {pid!r}: prompt {len(prompt)} + response {len(response)} tokens do not fit "
                         f"row_length {cfg.row_length}")
  build_path = os.path.join(directory, BUILD)
  P = cfg.signal.problems_per_shard
  if os.path.exists(build_path):
    artifacts.expect_fields(build_path, artifacts.read_json(build_path), {**identity, "problems_per_shard": P})
  elif writer:
    artifacts.write_json(build_path, {**identity, "problems_per_shard": P})
  if writer:
    artifacts.remove_stale_temporaries(directory)  # a killed run's, never a live process's

  shards, index_lines, batches = [], [], 0
  bar = progress_lib.bar(total=len(items), desc="teacher signal", unit="problem", disable=not (progress and writer))
  for s, first in enumerate(range(0, len(items), P)):
    chunk = items[first:first + P]
    sizes = [store_lib.record_bytes(len(r), cfg.signal.top_k, cfg.signal.logprob_dtype) for _, _, r in chunk]
    path = os.path.join(directory, store_lib.shard_name(s))
    if os.path.exists(path) and os.path.getsize(path) == sum(sizes):  # renamed into place = finished
      digest = artifacts.sha256_file(path)
      bar.update(len(chunk))
    else:
      digest, batches = _write_shard(path, chunk, teacher, mesh, cfg, vocab_size, pad_id, writer, bar, batches,
                                     after_batch)
    offset = 0
    for (pid, _, response), size in zip(chunk, sizes):
      index_lines.append(json.dumps({"id": pid, "shard": s, "offset": offset, "length": len(response),
                                     "response_sha256": store_lib.response_checksum(response)}, sort_keys=True))
      offset += size
    shards.append({"file": store_lib.shard_name(s), "sha256": digest, "bytes": sum(sizes), "problems": len(chunk),
                   "tokens": sum(len(r) for _, _, r in chunk)})
  bar.close()
  index = "".join(line + "\n" for line in index_lines).encode()
  manifest = dict(identity, problems_per_shard=P, teacher_vocab_rows=model_cfg.vocab_size,
                  record_layout="ids <i4 [n,k] | logprobs [n,k] | tail <f4 [n] | target_logprob <f4 [n]",
                  scoring={"batch_rows": cfg.signal.batch_size, "row_length": cfg.row_length, "chunk_size": cfg.signal.chunk_size},
                  counts={"problems": len(items), "tokens": sum(sh["tokens"] for sh in shards), "shards": len(shards)},
                  shards=shards, index={"file": store_lib.INDEX, "sha256": artifacts.sha256_bytes(index),
                                        "entries": len(items)})
  if writer:
    artifacts.write_bytes(os.path.join(directory, store_lib.INDEX), index)
    manifest = artifacts.write_manifest(directory, store_lib.KIND, **manifest)  # last: marks the store complete
    os.unlink(build_path)
  return manifest


def _write_shard(path, chunk, teacher, mesh, cfg: StoreConfig, vocab_size, pad_id, writer, bar, batches,
                 after_batch) -> tuple[str, int]:
  """Score one shard's problems batch by batch, appending to a temporary file renamed at the end."""
  _, graphdef, params = teacher
  h = hashlib.sha256()
  with artifacts.atomic_open(path, "wb") if writer else open(os.devnull, "wb") as f:
    scored = teacher_scoring.score_batches(
        graphdef, params, mesh, [(p, r) for _, p, r in chunk], k=cfg.signal.top_k, valid_vocab=vocab_size,
        length=_row_length(chunk, cfg), batch_rows=cfg.signal.batch_size, chunk_size=cfg.signal.chunk_size,
        temperature=cfg.temperature, pad_id=pad_id)
    for results in scored:
      for _, signal in results:  # batches come in input order
        data = store_lib.encode_record(signal, cfg.signal.logprob_dtype)
        h.update(data)
        f.write(data)
      bar.update(len(results))
      batches += 1
      if after_batch is not None:
        after_batch(batches)
  return h.hexdigest(), batches
