"""teacher_scoring against a direct, unchunked forward of the teacher on each sequence alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import loss_refs
from paced_jax import mesh as mesh_lib
from paced_jax.model import hf_checkpoint
from paced_jax.training import losses
from paced_jax.model import scoring as ts
from tiny_models import make_tiny_model

VALID = 96  # the tokenizer's size; "padded" models have more embedding rows


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
  """name -> (graphdef, params, mesh) on one device; "padded" has 128 rows for 96 real tokens."""
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  out = {}
  for name, family, rows in (("padded", "qwen2", 128), ("tied", "qwen3", VALID)):
    directory = make_tiny_model(family, str(tmp_path_factory.mktemp(name)), vocab_size=rows)
    cfg, graphdef, params = hf_checkpoint.load_model(directory, mesh)
    assert cfg.vocab_size == rows
    out[name] = graphdef, params, mesh
  return out


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens_BT, segment_ids_BT):
  model = nnx.merge(graphdef, params)
  hidden = model(tokens_BT, jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape), segment_ids_BT)
  return model.logits(hidden)


def dense_logprobs(graphdef, params, seqs, temperature=1.0):
  """Per sequence, float64 log-softmax over the real tokens at each position, [len, VALID].

  One unchunked forward, each sequence alone in its own right-padded row (causal attention
  makes the padding invisible to it).
  """
  L = 24
  tokens = np.zeros((len(seqs), L), np.int32)
  segments = np.zeros((len(seqs), L), np.int32)
  for i, seq in enumerate(seqs):
    tokens[i, :len(seq)], segments[i, :len(seq)] = seq, 1
  z = np.asarray(_logits(graphdef, params, tokens, segments), np.float64)[..., :VALID] / temperature
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return [logp[i, :len(seq)] for i, seq in enumerate(seqs)]


def sequences(seed, count=6):
  rng = np.random.default_rng(seed)
  return [(rng.integers(0, VALID, size=rng.integers(1, 7)), rng.integers(0, VALID, size=rng.integers(1, 9)))
          for _ in range(count)]


def response_refs(graphdef, params, seqs, temperature=1.0):
  """The dense teacher distributions that predict each response token: positions P-1 .. P+n-2."""
  full = [np.concatenate([p, r]) for p, r in seqs]
  return [ref[len(p) - 1:-1] for ref, (p, _) in zip(dense_logprobs(graphdef, params, full, temperature), seqs)]


def run(graphdef, params, mesh, seqs, **kw):
  kw = dict(dict(k=8, valid_vocab=VALID, length=24, batch_rows=2, chunk_size=5), **kw)
  return [r for batch in ts.score_batches(graphdef, params, mesh, seqs, **kw) for r in batch]


# Each case compiles the scorer once (slow on a shared CPU), so the grid is sparse: chunk sizes
# that divide T = 24, do not (5), and exceed it (100); a temperature; both vocabulary layouts.
@pytest.mark.parametrize("name,chunk_size,temperature", [("padded", 5, 1.0), ("padded", 100, 0.7), ("tied", 8, 1.0)])
def test_chunked_packed_scores_equal_direct_forward(teachers, name, chunk_size, temperature):
  graphdef, params, mesh = teachers[name]
  seqs = sequences(chunk_size)
  results = run(graphdef, params, mesh, seqs, chunk_size=chunk_size, temperature=temperature)
  assert [i for i, _ in results] == list(range(len(seqs)))
  for (_, response), ref, (_, got) in zip(seqs, response_refs(graphdef, params, seqs, temperature), results):
    n, k = len(response), 8
    assert got["ids"].shape == (n, k) and got["ids"].dtype == np.int32
    order = np.argsort(-ref, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(got["ids"], order)
    np.testing.assert_allclose(got["logprobs"], np.take_along_axis(ref, order, -1), atol=1e-5, rtol=0)
    ref_tail = 1.0 - np.exp(np.take_along_axis(ref, order, -1)).sum(-1)
    np.testing.assert_allclose(got["tail"], ref_tail, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["target_logprob"], ref[np.arange(n), response], atol=1e-5, rtol=0)


def test_k_equals_vocab_is_the_dense_distribution(teachers):
  graphdef, params, mesh = teachers["padded"]
  seqs = sequences(2)
  results = run(graphdef, params, mesh, seqs, k=VALID)
  for ref, (_, got) in zip(response_refs(graphdef, params, seqs), results):
    assert got["ids"].max() < VALID  # never a padded row
    dense = np.full(ref.shape, -np.inf)
    np.put_along_axis(dense, got["ids"], got["logprobs"], -1)
    np.testing.assert_allclose(dense, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got["tail"], 0.0)  # every real token is in the top-k
    np.testing.assert_allclose(np.exp(got["logprobs"].astype(np.float64)).sum(-1) + got["tail"], 1.0, atol=1e-5)
  # And the losses read it as the teacher's exact distribution: FKL to the dense logits is 0.
  signal = losses.TeacherSignal(*(jnp.asarray(got[key])[None] for key in ("ids", "logprobs", "tail")))
  fkl = jax.jit(functools.partial(loss_refs.token_divergence, kind="fkl"))(jnp.asarray(ref, jnp.float32)[None], signal)
  np.testing.assert_allclose(fkl, 0.0, atol=1e-5)


def test_pack_sequences_layout():
  seqs = [([5, 6], [7, 8, 9]), ([1], []), ([2, 3, 4], [10]), ([11, 12], [13, 14, 15, 16])]
  b = ts.pack_sequences(seqs, length=8, rows=3, pad_id=0)
  # Inputs are prompt + response[:-1]: 4, 0, 3 and 5 tokens; the third fits after the first.
  np.testing.assert_array_equal(b.tokens_BT, [[5, 6, 7, 8, 2, 3, 4, 0], [11, 12, 13, 14, 15, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(b.targets_BT[0, :7], [6, 7, 8, 9, 3, 4, 10])
  np.testing.assert_array_equal(b.segment_ids_BT, [[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(b.positions_BT[0], [0, 1, 2, 3, 0, 1, 2, 0])
  assert b.spans == (ts.Span(0, 1, 4), ts.Span(0, 0, 0), ts.Span(0, 6, 7), ts.Span(1, 1, 5))
  for span, (prompt, response) in zip(b.spans, seqs):  # each span predicts exactly the response
    np.testing.assert_array_equal(b.targets_BT[span.row, span.start:span.stop], response)


@pytest.mark.parametrize("seqs,kw,match", [
    ([([], [1])], {}, "empty teacher prompt"),
    ([([1] * 6, [2] * 4)], {}, "need 9 positions, more than the row length 8"),
    ([([1] * 4, [2] * 4)] * 3, {"rows": 2}, "need 3 rows of 8 tokens, only 2 allowed"),
])
def test_pack_sequences_errors(seqs, kw, match):
  with pytest.raises(ValueError, match=match):
    ts.pack_sequences(seqs, length=8, **kw)


def test_sharded_scoring_equals_one_device(tmp_path):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices")
  directory = make_tiny_model("qwen3", str(tmp_path / "m"), vocab_size=128)
  seqs = sequences(4, 10)
  outs = []
  for cfg_mesh, devices in ((mesh_lib.MeshConfig(data=1), jax.devices()[:1]),
                            (mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2), jax.devices())):
    mesh = mesh_lib.make_mesh(cfg_mesh, devices)
    _, graphdef, params = hf_checkpoint.load_model(directory, mesh)
    outs.append(run(graphdef, params, mesh, seqs, batch_rows=4, chunk_size=7))
  specs = [str(v.sharding.spec) for v in jax.tree.leaves(params)]
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)
  for (i, a), (j, b) in zip(*outs):
    assert i == j
    np.testing.assert_array_equal(a["ids"], b["ids"])
    for key in ("logprobs", "tail", "target_logprob"):
      np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0)


def test_batch_rows_must_divide_the_batch_axes(tmp_path):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices")
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=4, fsdp=2))
  with pytest.raises(ValueError, match="batch_rows=4 is not divisible by the mesh's batch axes data\\*fsdp=8"):
    next(ts.score_batches(None, None, mesh, [([1], [2])], k=1, valid_vocab=VALID, length=8, batch_rows=4))
