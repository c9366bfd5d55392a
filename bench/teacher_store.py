"""Teacher signal store: bytes per token, KL error of the sparse top-k form, scoring throughput.

The self-distillation pair of the demo on real responses: SmolLM2-135M-Instruct samples one
response per built-in problem under the plain student prompt (on-policy y_S; temperature 1,
no top-k / top-p); the teacher is the same model with the privileged `answer_only` prompt
(PromptConfig defaults), the student the same model under the student prompt. Per k:

  * scoring: `teacher_scoring.score_batches` (the jitted chunked scorer the store and the
    online path use) over all (teacher prompt, response) pairs, packed into `--batch_rows` rows
    of one length per batch: `--repeats` timed passes over all pairs, best kept; tok/s counts
    response tokens scored, pos/s the row positions computed (prompts and padding included).
    Compile time: a first call on one batch minus a second identical call. The store build
    (below) is timed too: scoring, encoding, sha256 and writing, end to end.
  * bytes/token: a real store written by `teacher_build.build_store` into a temp dir (bfloat16
    log-probs), shard bytes + index bytes over response tokens; the formula k * (4 + 2) + 8
    (ids int32, log-prob 2 bytes, tail f32, target f32) is printed next to it; manifest.json
    (a fixed ~1 KB per store) is not counted.
  * KL error: per response token, FKL = KL(p||q) and RKL = KL(q||p) between the dense teacher p
    and dense student q (full softmax over the vocabulary, from a direct forward of each model
    at the aligned positions, float32) against the same divergences on the k+1 buckets
    (`losses.teacher_bucket_logprobs` / `student_bucket_logprobs`) with the teacher's top-k in
    three forms: float32 as scored, bfloat16 as read back from the store, and float16 after the
    store's encode / decode round trip. The error is sparse - dense; merging buckets never
    increases a KL, so apart from the log-prob rounding it is <= 0 (the sparse form is a lower
    bound). Reported: mean and max |error| over tokens, and the mean signed error.

  .venv/bin/python bench/teacher_store.py --num_problems=16 --max_new_tokens=96 --json_out=/tmp/teacher_store.json

With the defaults this takes about 15 minutes on 2 cores at load 6-13 (sampling and the dense
forwards ~2.5 minutes, then ~2 minutes per k: two one-batch calls, a pass, a store build).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from bench import common
from paced_jax import mesh as mesh_lib
from paced_jax.model import loaded as loaded_model
from paced_jax.training import losses
from paced_jax.problems import builtin
from paced_jax.problems import prompts as prompts_lib
from paced_jax.teacher import build as teacher_build
from paced_jax.model import scoring as teacher_scoring
from paced_jax.teacher import store as teacher_store
from paced_jax.model import tokenization
from paced_jax.config import PromptConfig
from paced_jax.config import SamplingConfig, TeacherSignalConfig
from paced_jax.sampling.sampler import Sampler

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_problems", 16, "problems, one sampled response each")
flags.DEFINE_integer("max_new_tokens", 96, "response length limit")
flags.DEFINE_string("source", "basic_arithmetic", "built-in problem source")
flags.DEFINE_float("temperature", 1.0, "sampling temperature of the responses (scoring is at T = 1)")
flags.DEFINE_list("ks", ["8", "16", "32", "64", "128", "256"], "top-k values")
flags.DEFINE_integer("chunk_size", 128, "scorer positions per logits block (TeacherSignalConfig default)")
flags.DEFINE_integer("batch_rows", 8, "scorer rows per batch (TeacherSignalConfig default)")
flags.DEFINE_integer("repeats", 1, "timed scoring passes over all responses per k (best reported)")
flags.DEFINE_integer("dense_chunk", 128, "tokens per block of the dense reference divergences")
flags.DEFINE_integer("seed", 0, "problem and sampling seed")
flags.DEFINE_string("json_out", "", "also write all results here")

STORE_DTYPE = "bfloat16"  # the config default; float16 is measured through the same encode / decode
DTYPES = ("float32", "bfloat16", "float16")


def sample_responses(lm, student_prompts, max_new_tokens, temperature, seed) -> list[np.ndarray]:
  cfg = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, num_samples=1,
                       batch_rows=len(student_prompts), chunk_steps=16, seed=seed)
  return [r[0].tokens for r in Sampler.for_model(lm).generate(student_prompts, cfg, progress=False)]


def row_length(pairs) -> int:
  longest = max(len(p) + len(r) - 1 for p, r in pairs)
  return max(16, 1 << (longest - 1).bit_length())


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(graphdef, params, tokens_BT, positions_BT, segment_ids_BT):
  return nnx.merge(graphdef, params)(tokens_BT, positions_BT, segment_ids_BT)


def response_hidden(lm, pairs, pad_id) -> np.ndarray:
  """Final hidden states [N, D] predicting each response token, all responses in order.

  A direct forward of the model on packed `prompt + response[:-1]` rows (not the scorer), so
  the dense reference shares nothing with the sparse path past the decoder itself.
  """
  packed = teacher_scoring.pack_sequences(pairs, length=row_length(pairs), pad_id=pad_id)
  R, rows = packed.tokens_BT.shape[0], FLAGS.batch_rows
  hidden = []
  for first in range(0, R, rows):  # fixed [rows, T] blocks: one compile
    block = [np.zeros((rows, packed.tokens_BT.shape[1]), np.int32) for _ in range(3)]
    for b, x in zip(block, (packed.tokens_BT, packed.positions_BT, packed.segment_ids_BT)):
      b[:min(rows, R - first)] = x[first:first + rows]
    hidden.append(np.asarray(_forward(lm.graphdef, lm.params, *block))[:min(rows, R - first)])
  hidden_RTD = np.concatenate(hidden)
  return np.concatenate([hidden_RTD[s.row, s.start:s.stop] for s in packed.spans])


def score_all(lm, pairs, k, length):
  """One pass of the real scorer over every pair: per-response signals (f32), in order."""
  out = [None] * len(pairs)
  for batch in teacher_scoring.score_batches(lm.graphdef, lm.params, lm.mesh, pairs, k=k, valid_vocab=lm.valid_vocab,
                                             length=length, batch_rows=FLAGS.batch_rows,
                                             chunk_size=FLAGS.chunk_size, pad_id=tokenization.pad_id(lm.tokenizer)):
    for i, signal in batch:
      out[i] = signal
  return out


def write_store(lm, directory, items, k, length):
  """A store for `items` by the real writer; returns (shard bytes, index bytes, tokens)."""
  cfg = teacher_build.StoreConfig(TeacherSignalConfig(top_k=k, logprob_dtype=STORE_DTYPE, batch_size=FLAGS.batch_rows,
                                                      chunk_size=FLAGS.chunk_size), row_length=length)
  manifest = teacher_build.build_store(directory, items, teacher=(lm.cfg, lm.graphdef, lm.params), mesh=lm.mesh,
                                       teacher_fingerprint=lm.fingerprint,
                                       tokenizer_fingerprint=lm.tokenizer_fingerprint, vocab_size=lm.valid_vocab,
                                       cfg=cfg, pad_id=tokenization.pad_id(lm.tokenizer), progress=False)
  shard_bytes = sum(os.path.getsize(os.path.join(directory, s["file"])) for s in manifest["shards"])
  index_bytes = os.path.getsize(os.path.join(directory, teacher_store.INDEX))
  return shard_bytes, index_bytes, manifest["counts"]["tokens"]


def round_trip(signal, dtype):
  if dtype == "float32":
    return signal
  n, k = signal["ids"].shape
  return teacher_store.decode_record(teacher_store.encode_record(signal, dtype), n, k, dtype)


@functools.partial(jax.jit, static_argnames=("valid_vocab",))
def divergences(teacher_hidden_CD, student_hidden_CD, lm_head_DV, signals, *, valid_vocab: int):
  """Per token: dense FKL / RKL, the same through the k+1 buckets of every signal, and the
  largest gap between the dense teacher's log-probs and each float32 signal's at its ids."""
  def logits(hidden_CD):
    return jnp.einsum("cd,dv->cv", hidden_CD, lm_head_DV, preferred_element_type=jnp.float32)

  def log_softmax(logits_CV):
    return jax.nn.log_softmax(jnp.where(jnp.arange(logits_CV.shape[-1]) < valid_vocab, logits_CV, -jnp.inf), -1)

  student_logits_CV = logits(student_hidden_CD)
  log_p_CV, log_q_CV = log_softmax(logits(teacher_hidden_CD)), log_softmax(student_logits_CV)
  # Written out here, not through losses, so the reference shares no code with the sparse path.
  kl = lambda log_a, log_b: jnp.sum(jnp.where(log_a > -jnp.inf, jnp.exp(log_a) * (log_a - log_b), 0.0), -1)
  out = {"dense": (kl(log_p_CV, log_q_CV), kl(log_q_CV, log_p_CV))}
  gaps = {}
  for name, (ids_CK, logprobs_CK, tail_C) in signals.items():
    # The loss's own path: teacher buckets as stored, student folded from its full softmax.
    log_p_1CN = losses.teacher_bucket_logprobs(losses.TeacherSignal(ids_CK[None], logprobs_CK[None], tail_C[None]))
    log_q_1CN = losses.student_bucket_logprobs(student_logits_CV[None], ids_CK[None], vocab_size=valid_vocab)
    out[name] = (losses.forward_kl(log_p_1CN, log_q_1CN)[0], losses.reverse_kl(log_p_1CN, log_q_1CN)[0])
    if logprobs_CK.dtype == jnp.float32:
      gaps[name] = jnp.max(jnp.abs(jnp.take_along_axis(log_p_CV, ids_CK, -1) - logprobs_CK), -1)
  return out, gaps


def concat(signals):
  return {key: np.concatenate([s[key] for s in signals]) for key in ("ids", "logprobs", "tail", "target_logprob")}


def token_errors(teacher_hidden_ND, student_hidden_ND, lm, by_name):
  """Per-token dense and sparse divergences over all N tokens, `--dense_chunk` at a time."""
  head, axes = nnx.merge(lm.graphdef, lm.params).output_head()
  lm_head_DV = head if axes == "dv" else head.T
  N, C = teacher_hidden_ND.shape[0], FLAGS.dense_chunk
  pad = lambda x: np.concatenate([x, np.zeros((C - len(x), *x.shape[1:]), x.dtype)]) if len(x) < C else x
  results, gaps = [], []
  for a in range(0, N, C):  # the last block is zero-padded (one compile); its extra rows are dropped
    signals = {name: tuple(pad(s[key][a:a + C]) for key in ("ids", "logprobs", "tail")) for name, s in by_name.items()}
    out, gap = divergences(pad(teacher_hidden_ND[a:a + C]), pad(student_hidden_ND[a:a + C]), lm_head_DV, signals,
                           valid_vocab=lm.valid_vocab)
    n = min(C, N - a)
    results.append(jax.tree.map(lambda x: np.asarray(x)[:n], out))
    gaps.append(max(float(np.asarray(g)[:n].max()) for g in gap.values()))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *results), max(gaps)


def main(argv):
  del argv
  ks = [int(k) for k in FLAGS.ks]
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  lm = loaded_model.load("demo:smollm2", mesh)
  pcfg = PromptConfig()
  probs = builtin.generate(FLAGS.source, FLAGS.num_problems, FLAGS.seed, "train")
  student_prompts = [prompts_lib.student_prompt(lm.tokenizer, p, pcfg) for p in probs]
  teacher_prompts = [prompts_lib.teacher_prompt(lm.tokenizer, p, pcfg) for p in probs]
  print(f"# teacher store bench: {len(probs)} {FLAGS.source} problems, {common.machine()}", flush=True)

  start = time.perf_counter()
  responses = sample_responses(lm, student_prompts, FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.seed)
  lengths = [len(r) for r in responses]
  N = sum(lengths)
  print(f"  sampled {N} response tokens ({min(lengths)}-{max(lengths)} per response, "
        f"{sum(n == FLAGS.max_new_tokens for n in lengths)} cut at the limit) in {time.perf_counter() - start:.1f}s",
        flush=True)
  print(f"  response 0: {lm.tokenizer.decode(responses[0])[:160]!r}", flush=True)
  teacher_pairs = list(zip(teacher_prompts, responses))
  student_pairs = list(zip(student_prompts, responses))
  length = row_length(teacher_pairs)
  pad_id = tokenization.pad_id(lm.tokenizer)
  rows = teacher_scoring.pack_sequences(teacher_pairs, length=length, pad_id=pad_id).tokens_BT.shape[0]
  batches = -(-rows // FLAGS.batch_rows)
  positions = batches * FLAGS.batch_rows * length

  start = time.perf_counter()
  teacher_hidden_ND = response_hidden(lm, teacher_pairs, pad_id)
  student_hidden_ND = response_hidden(lm, student_pairs, pad_id)
  print(f"  dense forwards (teacher and student) in {time.perf_counter() - start:.1f}s", flush=True)

  items = [teacher_build.TeacherItem(p.id, tp, r) for p, tp, r in zip(probs, teacher_prompts, responses)]
  by_name, timing, storage = {}, {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    for k in ks:
      # One sequence is one [batch_rows, length] batch, the shape the full passes run: the
      # first call compiles, the second (the same work) measures what the compile added to it.
      one_batch = []
      for _ in range(2):
        start = time.perf_counter()
        score_all(lm, teacher_pairs[:1], k, length)
        one_batch.append(time.perf_counter() - start)
      timed = []
      for _ in range(max(1, FLAGS.repeats)):
        start = time.perf_counter()
        signals = score_all(lm, teacher_pairs, k, length)
        timed.append(time.perf_counter() - start)
      directory = os.path.join(tmp, f"k{k}")
      start = time.perf_counter()
      shard_bytes, index_bytes, tokens = write_store(lm, directory, items, k, length)
      timing[k] = dict(first_s=one_batch[0], warm_s=one_batch[1], timed_s=timed, build_s=time.perf_counter() - start)
      assert tokens == N, (tokens, N)
      store = teacher_store.TeacherStore(directory, verify="open")
      stored = concat([store.get(item.problem_id, item.response_ids) for item in items])
      f32 = concat(signals)
      # The store's records are the scorer's output through encode / decode: check, then reuse
      # the same round trip for the dtype the store was not written in.
      expect = round_trip(f32, STORE_DTYPE)
      if not all(np.array_equal(stored[key].view(np.uint8), expect[key].view(np.uint8)) for key in stored):
        raise AssertionError(f"k={k}: the store's records differ from the scorer's output after encode / decode")
      for dtype in DTYPES:
        by_name[f"{k}/{dtype}"] = stored if dtype == STORE_DTYPE else round_trip(f32, dtype)
      storage[k] = (shard_bytes, index_bytes, float(f32["tail"].mean()), float(f32["tail"].max()))
      print(f"  k={k}: one batch {one_batch[0]:.1f}s then {one_batch[1]:.1f}s, passes "
            f"{', '.join(f'{t:.1f}' for t in timed)}s, store build {timing[k]['build_s']:.1f}s, load {common.load()}",
            flush=True)

  start = time.perf_counter()
  errors, max_gap = token_errors(teacher_hidden_ND, student_hidden_ND, lm, by_name)
  print(f"  divergences in {time.perf_counter() - start:.1f}s; dense teacher vs scorer top-k log-probs: "
        f"max |gap| {max_gap:.2e} nats", flush=True)
  report(ks, N, len(items), rows, length, batches, positions, timing, storage, errors, max_gap)


def report(ks, N, problems_n, rows, length, batches, positions, timing, storage, errors, max_gap):
  fkl_dense, rkl_dense = errors["dense"]
  print(f"\n# {problems_n} responses, {N} response tokens; teacher rows {rows} x {length} "
        f"({positions} positions per pass in batches of {FLAGS.batch_rows}); load average {common.load()}")
  print(f"# dense teacher vs student per token: FKL mean {fkl_dense.mean():.4f} max {fkl_dense.max():.3f}, "
        f"RKL mean {rkl_dense.mean():.4f} max {rkl_dense.max():.3f} nats\n")
  rows_out = []
  for k in ks:
    shard_bytes, index_bytes, tail_mean, tail_max = storage[k]
    rows_out.append((k, f"{(shard_bytes + index_bytes) / N:.1f}", teacher_store.record_bytes(1, k, STORE_DTYPE),
                     shard_bytes, index_bytes, f"{tail_mean:.2e}", f"{tail_max:.2e}"))
  print(common.table(["k", "bytes/token (store)", "formula 6k+8", "shard bytes", "index bytes", "mean tail",
                      "max tail"], rows_out))
  print()
  rows_out, summary = [], {}
  for k in ks:
    for dtype in DTYPES:
      fkl, rkl = errors[f"{k}/{dtype}"]
      e_f, e_r = fkl - fkl_dense, rkl - rkl_dense
      summary[f"{k}/{dtype}"] = dict(fkl_mean_abs=float(np.abs(e_f).mean()), fkl_max_abs=float(np.abs(e_f).max()),
                                     fkl_mean=float(e_f.mean()), rkl_mean_abs=float(np.abs(e_r).mean()),
                                     rkl_max_abs=float(np.abs(e_r).max()), rkl_mean=float(e_r.mean()))
      s = summary[f"{k}/{dtype}"]
      rows_out.append((k, dtype, *(f"{s[key]:.2e}" for key in ("fkl_mean_abs", "fkl_max_abs", "fkl_mean",
                                                                 "rkl_mean_abs", "rkl_max_abs", "rkl_mean"))))
  print(common.table(["k", "log-probs", "FKL mean |err|", "FKL max |err|", "FKL mean err", "RKL mean |err|",
                      "RKL max |err|", "RKL mean err"], rows_out))
  print("(err = sparse - dense per token, nats. The k+1 bucket form is a lower bound of the dense KL: "
        "merging buckets never increases a KL, so err <= 0 up to the log-prob rounding.)\n")
  rows_out = []
  for k in ks:
    t = timing[k]
    best = min(t["timed_s"])
    rows_out.append((k, f"{t['first_s'] - t['warm_s']:.1f}", f"{best:.2f}", f"{N / best:.0f}", f"{positions / best:.0f}",
                     f"{t['build_s']:.2f}", f"{N / t['build_s']:.0f}"))
  print(common.table(["k", "compile ~s", "pass s", "response tok/s", "positions/s", "store build s",
                      "build tok/s"], rows_out))
  print(f"(compile ~s: first minus second call on one batch of {FLAGS.batch_rows} x {length}; pass: best of "
        f"{max(1, FLAGS.repeats)} scoring passes over all responses, {batches} batches; store build: teacher_build."
        "build_store end to end, scoring included)")
  if 64 in ks:
    bpt = sum(storage[64][:2]) / N
    for dtype in ("bfloat16", "float16"):
      err = summary[f"64/{dtype}"]["fkl_mean_abs"]
      print(f"target at k=64, {dtype} log-probs: {bpt:.1f} bytes/token <= 400: {'yes' if bpt <= 400 else 'NO'}; "
            f"mean |FKL error| {err:.2e} < 1e-3: {'yes' if err < 1e-3 else 'NO'}")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(dict(tokens=N, problems=problems_n, rows=rows, length=length, positions=positions, load=common.load(),
                     flags={name: FLAGS[name].value for name in ("num_problems", "max_new_tokens", "source",
                                                                 "temperature", "ks", "chunk_size", "batch_rows",
                                                                 "repeats", "seed")},
                     dense=dict(fkl_mean=float(fkl_dense.mean()), rkl_mean=float(rkl_dense.mean())),
                     max_topk_gap=max_gap, errors=summary,
                     storage={k: dict(zip(("shard_bytes", "index_bytes", "tail_mean", "tail_max"), v))
                              for k, v in storage.items()},
                     timing=timing), f, indent=1)


if __name__ == "__main__":
  app.run(main)
