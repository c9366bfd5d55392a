"""The pure train step: loss against a dense brute-force reference, sharding and micro-batch
invariance, weight-0 sequences, and skipped non-finite updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax import mesh as mesh_lib
from paced_jax.model import hf_checkpoint
from paced_jax.training import packing
from paced_jax.model import tiny as tiny_model
from paced_jax.config import TrainConfig
from paced_jax.training import train_step as ts

K = 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return tiny_model.ensure_tiny_model(str(tmp_path_factory.mktemp("m") / "tiny"), "qwen3", "nano", seed=3)


def _examples(n, vocab, seed=0, weights=None):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    P, R = int(rng.integers(2, 6)), int(rng.integers(2, 7))
    logits = rng.normal(size=(R, vocab)) * 2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[:, :K]
    top = np.take_along_axis(logp, ids, -1)
    out.append(packing.Example(rng.integers(3, vocab, size=P + R).astype(np.int32), P, ids.astype(np.int32),
                               top.astype(np.float32), (1 - np.exp(top).sum(-1)).astype(np.float32),
                               1.0 if weights is None else weights[i], pass_bucket=i % 3))
  return out


def _setup(tiny_dir, mesh_cfg, devices, micro_batches=1, train=None, **step_kwargs):
  mesh = mesh_lib.make_mesh(mesh_cfg, devices)
  cfg, graphdef, params = hf_checkpoint.load_model(tiny_dir, mesh)
  train = train or TrainConfig(lr=1e-2, weight_decay=0.0, loss_chunk=5, micro_batches=micro_batches)
  step_cfg = ts.StepConfig(graphdef, train, num_pass_buckets=3, valid_vocab=98, **step_kwargs)
  pure = nnx.to_pure_dict(params)
  param_sh = jax.tree.map(lambda x: x.sharding, pure)
  state = ts.init_state(pure, step_cfg)
  sh = ts.state_shardings(state, param_sh, mesh, step_cfg)
  state = jax.device_put(state, sh)
  return cfg, mesh, step_cfg, state, ts.jit_train_step(step_cfg, sh, mesh)


def _put(batch, mesh):
  return jax.device_put(batch, ts.Batch.shardings(mesh))


def test_loss_matches_dense_reference(tiny_dir):
  cfg, mesh, step_cfg, state, step = _setup(tiny_dir, mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  batch, dropped = packing.pack(_examples(6, 98), rows=6, seq_len=16, top_k=K)
  assert dropped == 0
  params0 = jax.tree.map(np.asarray, state.params)
  _, metrics = step(state, _put(batch, mesh))
  # Brute force: dense logits, softmax folded onto the teacher's K ids + tail, forward KL.
  model = nnx.merge(step_cfg.graphdef, params0)
  hidden = model(jnp.asarray(batch.tokens), jnp.asarray(batch.positions), jnp.asarray(batch.segment_ids))
  logq = np.asarray(jax.nn.log_softmax(np.asarray(model.logits(hidden), np.float64)[..., :98], axis=-1))
  total, seqs = 0.0, 0
  for r in range(6):
    for s in range(1, batch.segment_ids[r].max() + 1):
      pos = np.nonzero((batch.segment_ids[r] == s) & (batch.loss_mask[r] > 0))[0]
      kl = []
      for t in pos:
        p = np.append(np.exp(batch.teacher_logprobs[r, t]), batch.teacher_tail[r, t])
        qk = np.exp(logq[r, t, batch.teacher_ids[r, t]])
        q = np.append(qk, 1 - qk.sum())
        kl.append(np.sum(p * (np.log(p) - np.log(q))))
      total += np.mean(kl)
      seqs += 1
  np.testing.assert_allclose(float(metrics["loss"]), total / seqs, rtol=2e-4)
  assert float(metrics["sequences"]) == 6


@pytest.mark.parametrize("divergence", ["fkl", "rkl"])
def test_sharded_and_accumulated_gradients_agree(tiny_dir, divergence):
  batch, _ = packing.pack(_examples(8, 98, seed=1), rows=8, seq_len=16, top_k=K)
  results = []
  for mesh_cfg, devices, micro in ((mesh_lib.MeshConfig(data=1), jax.devices()[:1], 1),
                                   (mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2), jax.devices(), 1),
                                   (mesh_lib.MeshConfig(data=1), jax.devices()[:1], 4)):
    _, mesh, step_cfg, state, step = _setup(tiny_dir, mesh_cfg, devices, micro_batches=micro, divergence=divergence)
    with jax.set_mesh(mesh):
      loss, _, grads = jax.jit(lambda p, b: ts.accumulate_gradients(p, b, step_cfg))(state.params, _put(batch, mesh))
    state, metrics = step(state, _put(batch, mesh))
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
    results.append((jax.tree.map(np.asarray, grads), float(loss)))
  for grads, loss in results[1:]:
    np.testing.assert_allclose(loss, results[0][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(results[0][0])):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_weight_zero_sequence_changes_nothing(tiny_dir):
  ex = _examples(4, 98, seed=2, weights=[1.0, 0.5, 0.0, 2.0])
  with_zero, _ = packing.pack(ex, rows=4, seq_len=16, top_k=K)
  without, _ = packing.pack([e for e in ex if e.weight], rows=4, seq_len=16, top_k=K)
  params = []
  for batch in (with_zero, without):
    _, mesh, _, state, step = _setup(tiny_dir, mesh_lib.MeshConfig(data=1), jax.devices()[:1], weight_norm="batch")
    state, _ = step(state, _put(batch, mesh))
    params.append(jax.tree.map(np.asarray, state.params))
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("grad_clip", [1e-3, 1e6])  # the global-norm clip active, and not
def test_update_is_clipped_adamw_in_float64(tiny_dir, grad_clip):
  """Two steps: parameters and moments equal numpy float64 AdamW (optax's conventions: bias-corrected
  moments, eps outside the root, decoupled weight decay) on the step's own gradients, clipped to
  global norm `grad_clip`; the gradients themselves are checked against dense references above."""
  train = TrainConfig(lr=1e-2, weight_decay=0.1, grad_clip=grad_clip, b1=0.8, b2=0.95, loss_chunk=5)
  _, mesh, step_cfg, state, step = _setup(tiny_dir, mesh_lib.MeshConfig(data=1), jax.devices()[:1], train=train)
  gradients = jax.jit(lambda p, b: ts.accumulate_gradients(p, b, step_cfg)[2])
  f64 = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
  p = f64(state.params)
  mu, nu = [np.zeros_like(x) for x in p], [np.zeros_like(x) for x in p]
  for t in (1, 2):
    batch = _put(packing.pack(_examples(3, 98, seed=10 + t), rows=2, seq_len=16, top_k=K)[0], mesh)
    with jax.set_mesh(mesh):
      g = f64(gradients(state.params, batch))
    scale = min(1.0, grad_clip / np.sqrt(sum((x ** 2).sum() for x in g)))
    assert (scale < 1.0) == (grad_clip < 1.0)
    g = [x * scale for x in g]
    mu = [0.8 * m + 0.2 * x for m, x in zip(mu, g)]
    nu = [0.95 * v + 0.05 * x ** 2 for v, x in zip(nu, g)]
    p = [w - 1e-2 * ((m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.95 ** t)) + 1e-8) + 0.1 * w)
         for w, m, v in zip(p, mu, nu)]
    state, metrics = step(state, batch)
    assert int(metrics["skipped"]) == 0 and int(state.step) == t
  adam = state.opt_state[1][0]
  for got, want in [(state.params, p), (adam.mu, mu), (adam.nu, nu)]:
    for a, b in zip(jax.tree.leaves(got), want):
      np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=2e-5, atol=1e-7)


def test_non_finite_step_is_skipped(tiny_dir):
  _, mesh, _, state, step = _setup(tiny_dir, mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  batch, _ = packing.pack(_examples(2, 98, seed=3), rows=2, seq_len=16, top_k=K)
  bad = batch._replace(teacher_logprobs=np.where(batch.loss_mask[..., None] > 0, np.nan, batch.teacher_logprobs))
  before = jax.tree.map(np.asarray, (state.params, state.opt_state))
  state, metrics = step(state, _put(bad, mesh))
  assert int(metrics["skipped"]) == 1 and int(state.skipped) == 1 and int(state.step) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.params, state.opt_state))):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_packing_layout():
  ex = _examples(3, 98, seed=4)
  batch, dropped = packing.pack(ex, rows=2, seq_len=12, top_k=K)
  for r in range(2):
    for s in range(1, batch.segment_ids[r].max() + 1):
      idx = np.nonzero(batch.segment_ids[r] == s)[0]
      e = next(e for e in ex if len(e.tokens) == len(idx) and np.array_equal(e.tokens, batch.tokens[r, idx]))
      np.testing.assert_array_equal(batch.positions[r, idx], np.arange(len(idx)))
      loss_pos = idx[np.nonzero(batch.loss_mask[r, idx])[0]]
      assert list(loss_pos - idx[0]) == list(range(e.prompt_len - 1, len(e.tokens) - 1))
      np.testing.assert_array_equal(batch.teacher_ids[r, loss_pos], e.teacher_ids)
  assert dropped + int(sum(batch.segment_ids.max(1))) == 3
