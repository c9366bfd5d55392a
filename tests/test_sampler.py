"""Sampler: greedy parity with transformers and full-forward argmax, sampling distributions,
determinism, and sharded == single device."""

import dataclasses
import functools
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
import transformers
from flax import nnx

from paced_jax import mesh as mesh_lib
from paced_jax.model import hf_checkpoint
from paced_jax.sampling import sampler as sampler_lib
from paced_jax.sampling import token_draw
from tiny_models import make_tiny_model

EOS = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  # A large init scale makes greedy continuations varied instead of one repeated token.
  directory = make_tiny_model("qwen3", str(tmp_path_factory.mktemp("m")), initializer_range=0.3)
  return directory


def _sampler(directory, mesh_cfg, devices):
  mesh = mesh_lib.make_mesh(mesh_cfg, devices)
  cfg, graphdef, params = hf_checkpoint.load_model(directory, mesh)
  return sampler_lib.Sampler(cfg, params, mesh, stop_ids=[EOS], valid_vocab=96), (cfg, graphdef, params)


def _prompts(n, seed=0):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(3, 96, size=int(L))) for L in rng.integers(2, 14, size=n)]


def test_greedy_matches_transformers_and_full_forward(tiny):
  sampler, (cfg, graphdef, params) = _sampler(tiny, mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  prompts = _prompts(6)
  sc = sampler_lib.SamplingConfig(greedy=True, max_new_tokens=12, num_samples=1, batch_rows=4, chunk_steps=5)
  ours = [r[0].tokens.tolist() for r in sampler.generate(prompts, sc, progress=False)]
  assert len({tuple(t[:4]) for t in ours}) > 1 and any(len(set(t)) > 2 for t in ours)

  # transformers generate on one left-padded batch.
  hf = transformers.AutoModelForCausalLM.from_pretrained(tiny).eval()
  T = max(map(len, prompts))
  ids = np.array([[0] * (T - len(p)) + p for p in prompts])
  mask = np.array([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12, do_sample=False,
                      eos_token_id=EOS, pad_token_id=0)[:, T:].numpy()
  for mine, theirs in zip(ours, out):
    theirs = theirs.tolist()
    if EOS in theirs:
      theirs = theirs[:theirs.index(EOS) + 1]
    assert mine == theirs

  # Uncached reference: argmax of the full forward, one token at a time.
  model = nnx.merge(graphdef, params)
  for prompt, mine in zip(prompts[:3], ours):
    seq = list(prompt)
    for _ in mine:
      hidden = model(jnp.asarray([seq]), jnp.arange(len(seq))[None], jnp.ones((1, len(seq)), jnp.int32))
      seq.append(int(jnp.argmax(model.logits(hidden)[0, -1])))
      if seq[-1] == EOS:
        break
    assert seq[len(prompt):] == mine


def test_sharded_sampling_equals_single_device(tiny):
  prompts = _prompts(5, seed=1)
  sc = sampler_lib.SamplingConfig(max_new_tokens=10, num_samples=3, batch_rows=8, chunk_steps=4, seed=7)
  one, _ = _sampler(tiny, mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  eight, _ = _sampler(tiny, mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2), jax.devices())
  a = one.generate(prompts, sc, progress=False)
  b = eight.generate(prompts, sc, progress=False)
  for ra, rb in zip(a, b):
    for x, y in zip(ra, rb):
      np.testing.assert_array_equal(x.tokens, y.tokens)


def test_samples_independent_of_batching(tiny):
  sampler, _ = _sampler(tiny, mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  prompts = _prompts(4, seed=2)
  base = dict(max_new_tokens=8, num_samples=2, seed=3)
  a = sampler.generate(prompts, sampler_lib.SamplingConfig(batch_rows=8, **base), progress=False)
  b = sampler.generate(prompts[2:], sampler_lib.SamplingConfig(batch_rows=1, chunk_steps=3, **base),
                       prompt_keys=[2, 3], progress=False)
  for ra, rb in zip(a[2:], b):
    for x, y in zip(ra, rb):
      np.testing.assert_array_equal(x.tokens, y.tokens)
  assert any(not np.array_equal(x.tokens, y.tokens) for x, y in zip(a[0], a[1]))


def test_a_longer_prompt_len_gives_the_same_tokens(tiny):
  """A stage passes its longest prompt so all its chunks share one cache shape; shorter prompts
  sit left-padded in the bigger bucket and must sample the same tokens."""
  sampler, _ = _sampler(tiny, mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  prompts = _prompts(4, seed=4)
  sc = sampler_lib.SamplingConfig(max_new_tokens=8, num_samples=2, batch_rows=4, chunk_steps=3, seed=5,
                                  prompt_buckets=(16, 32, 64))
  a = sampler.generate(prompts, sc, progress=False)
  b = sampler.generate(prompts, sc, progress=False, prompt_len=40)
  for ra, rb in zip(a, b):
    for x, y in zip(ra, rb):
      np.testing.assert_array_equal(x.tokens, y.tokens)
  with pytest.raises(ValueError, match="prompt_len 1 is shorter"):
    sampler.generate(prompts, sc, progress=False, prompt_len=1)


def test_prompt_bucket_is_the_smallest_that_holds_the_prompt():
  cfg = sampler_lib.SamplingConfig(prompt_buckets=(32, 48))
  got = [sampler_lib.prompt_bucket(n, cfg) for n in (1, 32, 33, 48, 49, 256, 257)]
  assert got == [32, 32, 48, 48, 256, 256, 512]   # past the largest bucket: whole multiples of 256


def test_work_counts_the_rows_computed(tiny):
  """Work against counts read off the rollouts: one row computes exactly the tokens kept; with a
  row per sequence and one chunk, every row runs as long as the longest sequence."""
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  cfg, _, params = hf_checkpoint.load_model(tiny, mesh)
  # Many stop ids: sequences of many different lengths.
  sampler = sampler_lib.Sampler(cfg, params, mesh, stop_ids=range(2, 40), valid_vocab=96)
  prompts = _prompts(3, seed=8)
  base = dict(max_new_tokens=12, num_samples=3, seed=1)
  one_row = sampler_lib.Work()
  out = sampler.generate(prompts, sampler_lib.SamplingConfig(batch_rows=1, chunk_steps=3, **base), progress=False,
                         work=one_row)
  lengths = [len(r.tokens) for rs in out for r in rs]
  assert len(set(lengths)) > 2
  assert one_row == sampler_lib.Work(prefill_rows=9, decode_steps=sum(lengths) - 9, slots=sum(lengths))
  all_rows = sampler_lib.Work()
  sampler.generate(prompts, sampler_lib.SamplingConfig(batch_rows=16, chunk_steps=12, **base), progress=False,
                   work=all_rows)
  assert all_rows == sampler_lib.Work(prefill_rows=9, decode_steps=max(lengths) - 1, slots=9 + 9 * (max(lengths) - 1))


def test_a_used_sampler_leaves_no_weights_behind(tiny):
  """The jit cache keeps its static arguments alive; a sampler there would pin its copy of the
  weights (one more model per compile, e.g. per training step's fresh sampler)."""
  _, (cfg, _, params) = _sampler(tiny, mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  sc = sampler_lib.SamplingConfig(max_new_tokens=4, num_samples=1, batch_rows=2)
  sampler = sampler_lib.Sampler(cfg, params, mesh, stop_ids=[EOS], valid_vocab=96)
  sampler.generate(_prompts(2, seed=6), sc, progress=False)
  copy = weakref.ref(sampler.params["lm_head_DV"])
  del sampler
  gc.collect()
  assert copy() is None


def _reference_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z)
  keep = np.zeros_like(z, bool)
  if top_k:
    keep[order[:top_k]] = True
  else:
    keep[:] = True
  p = np.exp(z - z.max()) * keep
  p /= p.sum()
  if top_p < 1:
    cum = 0.0
    nucleus = np.zeros_like(keep)
    for i in order:
      if not keep[i] or cum >= top_p:
        break
      nucleus[i] = True
      cum += p[i]
    p = p * nucleus
    p /= p.sum()
  return p


@pytest.mark.parametrize("settings", [dict(temperature=0.7), dict(top_k=3), dict(top_p=0.8),
                                      dict(temperature=1.3, top_k=4, top_p=0.9)])
def test_sampling_follows_distribution(settings):
  logits = np.array([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -9.0], np.float32)
  n = 20000
  sc = sampler_lib.SamplingConfig(seed=11, **settings)
  tokens = jax.jit(lambda s, t: token_draw.sample_tokens(jnp.broadcast_to(logits, (n, 8)), s, t, sc, valid_vocab=7))(
      jnp.arange(n, dtype=jnp.int32), jnp.zeros(n, jnp.int32))
  counts = np.bincount(np.asarray(tokens), minlength=8)
  expected = _reference_probs(logits[:7], **settings)
  assert counts[7] == 0  # beyond valid_vocab: never sampled
  support = expected > 0
  assert counts[:7][~support].sum() == 0
  _, pvalue = scipy.stats.chisquare(counts[:7][support], n * expected[support])
  assert pvalue > 1e-3, (counts, n * expected)


def _wide_logits(V=700, seed=5):
  """A vocabulary of several sampler blocks: most mass on a few tokens spread over the blocks
  (block edges included), a low floor everywhere else, the last rows beyond valid_vocab."""
  rng = np.random.default_rng(seed)
  logits = np.full(V, -6.0, np.float32) + rng.normal(size=V).astype(np.float32) * 0.1
  hot = [0, 3, 255, 256, 300, 511, 512, 650]
  logits[hot] = rng.normal(size=len(hot)).astype(np.float32) + 2.0
  return logits


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.8, top_k=5), dict(top_k=40, top_p=0.7),
                                      dict(top_p=0.6), dict(temperature=3.0, top_p=0.9)])
def test_sampling_follows_distribution_over_blocks(settings):
  """The two-level samplers (block sums / block maxima, `sampler._BLOCK` tokens per block) against
  the exact distribution; `temperature=3, top_p=0.9` needs more tokens than the top-p candidate
  set holds, so it runs the exact full-sort fallback."""
  V, valid = 700, 690
  logits = _wide_logits(V)
  n = 40000
  sc = sampler_lib.SamplingConfig(seed=3, **settings)
  tokens = jax.jit(lambda s, t: token_draw.sample_tokens(jnp.broadcast_to(logits, (n, V)), s, t, sc, valid_vocab=valid))(
      jnp.arange(n, dtype=jnp.int32), jnp.zeros(n, jnp.int32))
  counts = np.bincount(np.asarray(tokens), minlength=V)
  expected = _reference_probs(logits[:valid], **settings) * n
  assert counts[valid:].sum() == 0
  assert counts[:valid][expected == 0].sum() == 0
  big = expected >= 5  # chi-square wants expected counts >= 5: pool the rest into one cell
  observed = np.append(counts[:valid][big], counts[:valid][~big].sum())
  wanted = np.append(expected[big], expected[~big].sum())
  keep = wanted > 0
  _, pvalue = scipy.stats.chisquare(observed[keep], wanted[keep])
  assert pvalue > 1e-3, settings


def test_top_candidates_exact():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 1000)).astype(np.float32)
  logits[0, :900] = -np.inf  # most blocks empty
  for k in (1, 5, 40):
    values, ids = token_draw.top_candidates(jnp.asarray(logits), k)
    ref_values, ref_ids = jax.lax.top_k(jnp.asarray(logits), k)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(ids, ref_ids)


def _ragged_dense(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, *, sm_scale, **blocks):
  """ragged_paged_attention's semantics (its reference, ref_ragged_paged_attention) for T queries
  per row, jittable; the Pallas kernel does not run on CPU (tests/test_pages_attention.py)."""
  B, P = page_indices.shape
  _, Y, C, Dh = kv_pages.shape
  T, H, J = q.shape[0] // B, q.shape[1], C // 2
  kv_BSJ2Dh = kv_pages[page_indices].reshape(B, P * Y, J, 2, Dh).astype(jnp.float32)
  s_BJGTS = jnp.einsum("btjgd,bsjd->bjgts", q.reshape(B, T, J, H // J, Dh).astype(jnp.float32),
                       kv_BSJ2Dh[..., 0, :]) * sm_scale
  visible_BTS = jnp.arange(P * Y)[None, None] < (kv_lens[:, None] - T + jnp.arange(T) + 1)[:, :, None]
  p_BJGTS = jax.nn.softmax(jnp.where(visible_BTS[:, None, None], s_BJGTS, -jnp.inf), axis=-1)
  return jnp.einsum("bjgts,bsjd->btjgd", p_BJGTS, kv_BSJ2Dh[..., 1, :]).reshape(B * T, H, Dh).astype(q.dtype)


@pytest.mark.parametrize("mesh_cfg,devices,reader", [(mesh_lib.MeshConfig(data=1), 1, "gather"),
                                                     (mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2), 8, "gather"),
                                                     (mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2), 8, "ragged")])
def test_paged_cache_gives_the_dense_cache_tokens(tiny, monkeypatch, mesh_cfg, devices, reader):
  """A page pool too small for every row at full length: rows wait for pages, get evicted and are
  sampled again from scratch, and every rollout still equals the dense cache's, token for token.
  reader 'ragged': pages read as the TPU does (ragged paged attention, its semantics standing in
  for the kernel on CPU), the write-then-attend order, lengths and page tables the sampler gives it."""
  if reader == "ragged":
    monkeypatch.setattr(sampler_lib.decoding, "_ragged_unsupported", lambda cfg, platform: "")
    monkeypatch.setattr(sampler_lib.decoding, "_ragged_attention",
                        functools.partial(sampler_lib.decoding._ragged_attention, kernel=_ragged_dense))
  evicted = []
  top_up = sampler_lib.pages_lib.top_up

  def spy(*args):
    out = top_up(*args)
    evicted.extend(out)
    return out
  monkeypatch.setattr(sampler_lib.pages_lib, "top_up", spy)
  sampler, (cfg, _, _) = _sampler(tiny, mesh_cfg, jax.devices()[:devices])
  shards = sampler.row_multiple
  prompts = _prompts(5, seed=4)
  # Bucket 16 + 10 new tokens = 7 pages of 4 per row at most; a paged row holds its prompt (2-13
  # tokens) and what it generated, so 7 pages per device hold one row at full length, and two rows
  # of 6-13 prompt tokens each need 4 pages by the end of their first chunk.
  base = sampler_lib.SamplingConfig(max_new_tokens=10, num_samples=3, batch_rows=2 * shards, chunk_steps=3, seed=5,
                                    prompt_buckets=(16,))
  dense = sampler.generate(prompts, base, progress=False)
  page_gib = sampler_lib.decoding.page_bytes(cfg, 4) / (1 << 30)
  paged_cfg = dataclasses.replace(base, kv_cache="paged", page_size=4, cache_gib=7.5 * page_gib, paged_attention=reader)
  assert sampler.paged_attention(paged_cfg) == reader
  paged = sampler.generate(prompts, paged_cfg, progress=False)
  assert evicted, "the pool was meant to run out"
  for rd, rp in zip(dense, paged):
    for x, y in zip(rd, rp):
      np.testing.assert_array_equal(x.tokens, y.tokens)
      assert x.finished == y.finished


@pytest.mark.parametrize("impl", ["blockwise", "auto"])
def test_prefill_attention_equals_dense(tiny, impl):
  """Prefill runs attention through model/attention.py's entry point: blockwise (T = 200 is not a
  multiple of its 128-token block) and auto (CPU: dense below 512 tokens) give dense attention's
  hidden states and keys/values at every prompt token of left-padded rows."""
  sampler, (cfg, _, _) = _sampler(tiny, mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  rng = np.random.default_rng(3)
  lens = np.array([200, 37, 1, 120])
  W = 200
  tokens = np.zeros((len(lens), W), np.int32)
  for b, L in enumerate(lens):
    tokens[b, W - L:] = rng.integers(3, 96, size=L)
  segments = (np.arange(W)[None] >= (W - lens)[:, None]).astype(np.int32)
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
  run = lambda attention: sampler_lib.decoding.prefill(cfg.replace(attention=attention), sampler.params,
                                                       *map(jnp.asarray, (tokens, positions, segments)))
  (hidden, keys, values), (ref_hidden, ref_keys, ref_values) = run(impl), run("dense")
  real = segments.astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[real], np.asarray(ref_hidden)[real], rtol=1e-5, atol=1e-5)
  for k, rk in zip(keys + values, ref_keys + ref_values):
    np.testing.assert_allclose(np.asarray(k).transpose(0, 2, 1, 3)[real], np.asarray(rk).transpose(0, 2, 1, 3)[real],
                               rtol=1e-5, atol=1e-5)
