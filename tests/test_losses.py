"""losses.py against float64 numpy references written the obvious way."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_refs
from paced_jax.training import losses

KINDS = ("fkl", "rkl", "akl", "jsd")
F32 = jnp.float32
TOL = dict(rtol=1e-5, atol=2e-6)  # float32 results against float64 references

# XLA compiles dominate these tests' run time, so everything is jitted (op-by-op dispatch
# compiles far more), one compiled function serves every kind, and LLVM does not optimise:
# for arrays this small that buys nothing and triples the compile time.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
reduce_token_loss = jit(losses.reduce_token_loss, static_argnames=("reduction", "weight_norm", "max_segments"))


def divergences(logits_BTV, teacher, *, mix=(1.0, 1.0, 1.0, 1.0), temperature=1.0, vocab_size=None, **kw):
  """({kind: per-token divergence [B, T]}, d sum_kind mix[kind] * sum(divergence) / d logits)."""
  return _divergences(logits_BTV, teacher, f32(mix), f32(temperature), vocab_size=vocab_size, **kw)


@functools.partial(jit, static_argnames=("vocab_size", "akl_mu", "jsd_beta"))
def _divergences(logits_BTV, teacher, mix_G, temperature, *, vocab_size, akl_mu=0.5, jsd_beta=0.5):
  def total(logits_BTV):
    values = {
      kind: loss_refs.token_divergence(
        logits_BTV, teacher, kind=kind, temperature=temperature, vocab_size=vocab_size, akl_mu=akl_mu, jsd_beta=jsd_beta
      )
      for kind in KINDS
    }
    return sum(m * v.sum() for m, v in zip(mix_G, values.values())), values

  grad_BTV, values = jax.grad(total, has_aux=True)(logits_BTV)
  return values, grad_BTV


# ---------------------------------------------------------------------------------------------
# float64 references on one position: p, q are probability vectors over the same buckets.


def softmax64(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ref_kl(a, b):
  m = a > 0
  return float(np.sum(a[m] * (np.log(a[m]) - np.log(b[m]))))


def ref_head_share(p, q, mu, tail_last):
  """g_head / (g_head + g_tail); with `tail_last` the last bucket is the merged tail, always tail."""
  ranked = p[:-1] if tail_last else p
  order = np.argsort(-ranked, kind="stable")
  head = np.zeros(p.shape, bool)
  head[order[np.cumsum(ranked[order]) <= mu]] = True
  head[order[0]] = True
  gap = np.abs(p - q)
  return gap[head].sum() / gap.sum()


def ref_div(p, q, kind, *, tail_last, mu=0.5, beta=0.5, share=None):
  if kind == "fkl":
    return ref_kl(p, q)
  if kind == "rkl":
    return ref_kl(q, p)
  if kind == "akl":
    share = ref_head_share(p, q, mu, tail_last) if share is None else share
    return share * ref_kl(p, q) + (1 - share) * ref_kl(q, p)
  m = beta * p + (1 - beta) * q
  return beta * ref_kl(p, m) + (1 - beta) * ref_kl(q, m)


def merge(dist, ids):
  """The k+1 bucket form of a full distribution: its mass at `ids`, then the rest (summed, no cancellation)."""
  rest = np.ones(dist.shape, bool)
  rest[ids] = False
  return np.append(dist[ids], dist[rest].sum())


def random_case(seed, B=2, T=5, V=40):
  """Teacher and student logits; per-position scales make some teachers peaked, some flat."""
  rng = np.random.default_rng(seed)
  teacher_BTV = rng.normal(size=(B, T, V)) * rng.uniform(0.3, 5.0, size=(B, T, 1))
  student_BTV = rng.normal(size=(B, T, V)) * rng.uniform(0.3, 3.0, size=(B, T, 1))
  return teacher_BTV, student_BTV


def sparse_teacher(teacher_BTV, K):
  """The stored form of a teacher: top-K ids by probability, their log-probs, the tail mass."""
  p_BTV = softmax64(teacher_BTV)
  ids_BTK = np.argsort(-p_BTV, axis=-1)[..., :K]
  tail_BT = np.array([[merge(p, ids)[-1] for p, ids in zip(p_TV, ids_TK)] for p_TV, ids_TK in zip(p_BTV, ids_BTK)])
  logprobs_BTK = np.log(np.take_along_axis(p_BTV, ids_BTK, -1))
  return losses.TeacherSignal(jnp.asarray(ids_BTK, jnp.int32), f32(logprobs_BTK), f32(tail_BT))


def ref_sparse(teacher_BTV, student_BTV, ids_BTK, kind, **kw):
  p_BTV, q_BTV = softmax64(teacher_BTV), softmax64(student_BTV)
  div_BT = np.zeros(p_BTV.shape[:2])
  for b, t in np.ndindex(div_BT.shape):
    ids_K = ids_BTK[b, t]
    div_BT[b, t] = ref_div(merge(p_BTV[b, t], ids_K), merge(q_BTV[b, t], ids_K), kind, tail_last=True, **kw)
  return div_BT


def ref_dense(teacher_BTV, student_BTV, kind, **kw):
  p_BTV, q_BTV = softmax64(teacher_BTV), softmax64(student_BTV)
  div_BT = np.zeros(p_BTV.shape[:2])
  for b, t in np.ndindex(div_BT.shape):
    div_BT[b, t] = ref_div(p_BTV[b, t], q_BTV[b, t], kind, tail_last=False, **kw)
  return div_BT


def f32(x):
  return jnp.asarray(x, jnp.float32)


# ---------------------------------------------------------------------------------------------
# Divergences.


def test_dense_matches_reference():
  teacher_BTV, student_BTV = random_case(0)
  got, _ = divergences(f32(student_BTV), loss_refs.dense_to_sparse(f32(teacher_BTV)))
  for kind in KINDS:
    np.testing.assert_allclose(got[kind], ref_dense(teacher_BTV, student_BTV, kind), **TOL, err_msg=kind)


@pytest.mark.parametrize("K", [1, 5, 20])
def test_sparse_matches_merged_reference(K):
  teacher_BTV, student_BTV = random_case(1)
  teacher = sparse_teacher(teacher_BTV, K)
  got, _ = divergences(f32(student_BTV), teacher)
  for kind in KINDS:
    want = ref_sparse(teacher_BTV, student_BTV, np.asarray(teacher.ids_BTK), kind)
    np.testing.assert_allclose(got[kind], want, **TOL, err_msg=kind)


def test_akl_and_jsd_parameters():
  teacher_BTV, student_BTV = random_case(2)
  teacher = sparse_teacher(teacher_BTV, 5)
  ids = np.asarray(teacher.ids_BTK)
  got, _ = divergences(f32(student_BTV), teacher, akl_mu=0.9, jsd_beta=0.2)
  np.testing.assert_allclose(got["akl"], ref_sparse(teacher_BTV, student_BTV, ids, "akl", mu=0.9), **TOL)
  np.testing.assert_allclose(got["jsd"], ref_sparse(teacher_BTV, student_BTV, ids, "jsd", beta=0.2), **TOL)


def test_sparse_with_all_ids_equals_dense():
  teacher_BTV, student_BTV = random_case(3)
  # Every id, in a shuffled order, with no tail: the same distribution as the dense signal.
  perm_BTV = jnp.asarray(np.argsort(np.random.default_rng(0).random(teacher_BTV.shape), -1), jnp.int32)
  dense = loss_refs.dense_to_sparse(f32(teacher_BTV))
  assert dense.ids_BTK.shape[-1] == teacher_BTV.shape[-1]
  shuffled = losses.TeacherSignal(perm_BTV, jnp.take_along_axis(dense.logprobs_BTK, perm_BTV, -1), dense.tail_BT)
  (want, _), (got, _) = divergences(f32(student_BTV), dense), divergences(f32(student_BTV), shuffled)
  for kind in KINDS:
    np.testing.assert_allclose(got[kind], want[kind], rtol=1e-5, atol=1e-6, err_msg=kind)


def test_sparse_is_a_lower_bound():
  teacher_BTV, student_BTV = random_case(4)
  dense, _ = divergences(f32(student_BTV), loss_refs.dense_to_sparse(f32(teacher_BTV)))
  for K in (1, 5, 20):
    sparse, _ = divergences(f32(student_BTV), sparse_teacher(teacher_BTV, K))
    for kind in ("fkl", "rkl"):
      assert np.all(np.asarray(sparse[kind]) <= np.asarray(dense[kind]) + 1e-5), (kind, K)


def test_temperature_divides_both_logits():
  teacher_BTV, student_BTV = random_case(5)
  tau = 1.7
  got, _ = divergences(f32(student_BTV), loss_refs.dense_to_sparse(f32(teacher_BTV), temperature=tau), temperature=tau)
  for kind in KINDS:
    want = ref_dense(teacher_BTV / tau, student_BTV / tau, kind)
    np.testing.assert_allclose(got[kind], want, **TOL, err_msg=kind)


def test_padded_vocab_rows_are_ignored():
  teacher_BTV, student_BTV = random_case(6)
  V = student_BTV.shape[-1]
  pad = np.full(student_BTV.shape[:2] + (7,), 9.0)  # large logits: they would dominate if counted
  padded_BTV = f32(np.concatenate([student_BTV, pad], -1))
  dense = loss_refs.dense_to_sparse(f32(np.concatenate([teacher_BTV, pad], -1)), vocab_size=V)
  assert dense.ids_BTK.shape[-1] == V
  for teacher in (dense, sparse_teacher(teacher_BTV, 5)):
    got, grad_BTV = divergences(padded_BTV, teacher, vocab_size=V)
    want, want_grad_BTV = divergences(f32(student_BTV), teacher)
    for kind in KINDS:
      np.testing.assert_allclose(got[kind], want[kind], rtol=1e-5, atol=1e-6, err_msg=kind)
    assert np.all(np.asarray(grad_BTV[..., V:]) == 0)
    np.testing.assert_allclose(grad_BTV[..., :V], want_grad_BTV, rtol=1e-5, atol=1e-6)


def test_empty_tails_and_extreme_logits_stay_finite():
  teacher_BTV, student_BTV = random_case(7)
  student_BTV[0, 0] = 0.0
  student_BTV[0, 0, 3] = 120.0  # all the student's mass on one token: its tail underflows to 0
  teacher = sparse_teacher(teacher_BTV, 5)
  teacher = teacher._replace(tail_BT=teacher.tail_BT.at[1, 2].set(-1e-7))  # a tail stored as 1 - sum, rounded
  for signal in (teacher, loss_refs.dense_to_sparse(f32(teacher_BTV))):
    values, grad_BTV = divergences(f32(student_BTV), signal)  # a nan in any kind's gradient shows in the sum
    assert all(np.all(np.isfinite(v)) for v in values.values()) and np.all(np.isfinite(grad_BTV))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_finite_differences(kind):
  teacher_BTV, student_BTV = random_case(8, B=1, T=3, V=12)
  teacher = sparse_teacher(teacher_BTV, 4)
  ids_BTK = np.asarray(teacher.ids_BTK)
  p_BTV = softmax64(teacher_BTV)

  # AKL's mixing weights are constants for the gradient: freeze them at the base point.
  q_BTV = softmax64(student_BTV)
  buckets = lambda dist_BTV, t: merge(dist_BTV[0, t], ids_BTK[0, t])  # noqa: E731
  shares = [ref_head_share(buckets(p_BTV, t), buckets(q_BTV, t), 0.5, True) for t in range(3)]

  def ref_loss(z_BTV):
    q_BTV = softmax64(z_BTV)
    return sum(ref_div(buckets(p_BTV, t), buckets(q_BTV, t), kind, tail_last=True, share=shares[t]) for t in range(3))

  h = 1e-5
  fd_BTV = np.zeros_like(student_BTV)
  for i in np.ndindex(student_BTV.shape):
    up, down = student_BTV.copy(), student_BTV.copy()
    up[i] += h
    down[i] -= h
    fd_BTV[i] = (ref_loss(up) - ref_loss(down)) / (2 * h)
  _, grad_BTV = divergences(f32(student_BTV), teacher, mix=[k == kind for k in KINDS])
  np.testing.assert_allclose(grad_BTV, fd_BTV, rtol=1e-4, atol=2e-6)


def test_unknown_names_and_bad_beta_raise():
  log_BTN = jnp.log(jnp.full((1, 1, 2), 0.5))
  with pytest.raises(ValueError, match="config.train.loss: 'kl' is not a registered divergence"):
    losses.hyperparameters("kl")
  with pytest.raises(ValueError, match="config.train.loss_params.akl.beta: akl has no such hyperparameter"):
    losses.hyperparameters("fkl", {"akl": {"beta": 0.3}})
  assert losses.hyperparameters("akl", {"akl": {"mu": 0.3}, "jsd": {"beta": 0.1}}).mu == 0.3
  with pytest.raises(ValueError, match="beta"):
    losses.divergence(log_BTN, log_BTN, "jsd", losses.hyperparameters("jsd", {"jsd": {"beta": 1.0}}))


# ---------------------------------------------------------------------------------------------
# The chunked path.


def hidden_case(seed, B=2, T=10, D=6, V=30, K=5, vocab_size=None):
  """Final hidden states, an LM head, and a top-K teacher over the first `vocab_size` ids."""
  rng = np.random.default_rng(seed)
  hidden_BTD = f32(rng.normal(size=(B, T, D)))
  lm_head_DV = f32(rng.normal(size=(D, V)) * 0.7)
  teacher_BTV = rng.normal(size=(B, T, vocab_size or V)) * 2.0
  return hidden_BTD, lm_head_DV, teacher_BTV, sparse_teacher(teacher_BTV, K)


# ---------------------------------------------------------------------------------------------
# Reductions over packed rows.

SEGMENTS_BT = np.array(
  [
    [1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 4, 4],
  ]
)
SEQ_WEIGHTS = {(0, 1): 0.5, (0, 2): 2.0, (0, 3): 0.0, (1, 1): 1.2, (2, 1): 0.7, (2, 2): 1.0, (2, 3): 3.0, (2, 4): 0.4}


def packed_case(seed):
  rng = np.random.default_rng(seed)
  token_loss_BT = rng.uniform(0.0, 2.0, size=SEGMENTS_BT.shape)
  loss_mask_BT = (rng.random(SEGMENTS_BT.shape) < 0.7).astype(np.float32)
  for b, s in SEQ_WEIGHTS:  # every sequence has a loss token ...
    loss_mask_BT[b, np.flatnonzero(SEGMENTS_BT[b] == s)[-1]] = 1
  loss_mask_BT[2, 0:2] = 0  # ... but (2, 1), which is then not counted
  loss_mask_BT[SEGMENTS_BT == 0] = 1  # padding must be ignored even where the mask is set
  token_loss_BT[SEGMENTS_BT == 0] = np.nan  # ... and whatever it holds
  weight_BT = np.array([[SEQ_WEIGHTS.get((b, s), 9.0) for s in row] for b, row in enumerate(SEGMENTS_BT)])
  return token_loss_BT, loss_mask_BT, weight_BT


def ref_reduction(token_loss_BT, loss_mask_BT, weight_BT, reduction, weight_norm):
  """One sequence at a time, with Python loops."""
  seq_losses, seq_weights, token_terms, token_weights = [], [], [], []
  for (b, s), w in SEQ_WEIGHTS.items():
    sel = (SEGMENTS_BT[b] == s) & (loss_mask_BT[b] > 0)
    if sel.any():
      seq_losses.append(token_loss_BT[b][sel].mean())
      seq_weights.append(w)
      token_terms.extend(w * token_loss_BT[b][sel])
      token_weights.extend([w] * sel.sum())
  if reduction == "seq_mean":
    num = np.dot(seq_weights, seq_losses)
    den = np.sum(seq_weights) if weight_norm == "batch" else len(seq_losses)
  else:
    num = np.sum(token_terms)
    den = np.sum(token_weights) if weight_norm == "batch" else len(token_terms)
  return num / den, len(seq_losses)


@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
@pytest.mark.parametrize("weight_norm", ["dataset_mean", "batch"])
def test_packed_reduction_matches_per_sequence(reduction, weight_norm):
  token_loss_BT, loss_mask_BT, weight_BT = packed_case(12)
  args = (f32(token_loss_BT), f32(loss_mask_BT), jnp.asarray(SEGMENTS_BT, jnp.int32), f32(weight_BT))
  out = reduce_token_loss(*args, reduction=reduction, weight_norm=weight_norm)
  want, num_seqs = ref_reduction(token_loss_BT, loss_mask_BT, weight_BT, reduction, weight_norm)
  np.testing.assert_allclose(out.loss, want, rtol=1e-6)
  assert int(out.num_seqs) == num_seqs == 7 and not bool(out.skip)
  assert int(out.num_tokens) == int(((loss_mask_BT > 0) & (SEGMENTS_BT > 0)).sum())
  # Per-sequence outputs, at [row, segment id - 1].
  for (b, s), w in SEQ_WEIGHTS.items():
    sel = (SEGMENTS_BT[b] == s) & (loss_mask_BT[b] > 0)
    assert bool(out.seq_valid_BE[b, s - 1]) == sel.any()
    if sel.any():
      np.testing.assert_allclose(out.seq_loss_BE[b, s - 1], token_loss_BT[b][sel].mean(), rtol=1e-6)
      np.testing.assert_allclose(out.seq_weight_BE[b, s - 1], w, rtol=1e-6)
  # Fewer segment slots than T give the same loss when they cover every id.
  small = reduce_token_loss(*args, reduction=reduction, weight_norm=weight_norm, max_segments=4)
  np.testing.assert_allclose(small.loss, out.loss, rtol=1e-6)
  assert small.seq_loss_BE.shape == (3, 4)


def test_packing_does_not_change_the_loss():
  token_loss_BT, loss_mask_BT, weight_BT = packed_case(13)
  packed = reduce_token_loss(f32(token_loss_BT), f32(loss_mask_BT), jnp.asarray(SEGMENTS_BT), f32(weight_BT))
  # The same sequences, one per row.
  unpacked = [np.zeros((len(SEQ_WEIGHTS), SEGMENTS_BT.shape[1])) for _ in range(4)]
  for r, (b, s) in enumerate(SEQ_WEIGHTS):
    sel = SEGMENTS_BT[b] == s
    n = sel.sum()
    for arr, src in zip(unpacked, (token_loss_BT, loss_mask_BT, SEGMENTS_BT, weight_BT)):
      arr[r, :n] = src[b][sel]
    unpacked[2][r, :n] = 1
  loss_BT, mask_BT, seg_BT, w_BT = unpacked
  single = reduce_token_loss(f32(loss_BT), f32(mask_BT), jnp.asarray(seg_BT, jnp.int32), f32(w_BT))
  np.testing.assert_allclose(single.loss, packed.loss, rtol=1e-6)


def test_micro_batches_with_the_global_denominator_add_up():
  token_loss_BT, loss_mask_BT, weight_BT = packed_case(14)
  args = (f32(token_loss_BT), f32(loss_mask_BT), jnp.asarray(SEGMENTS_BT), f32(weight_BT))
  for reduction in losses.REDUCTIONS:
    whole = reduce_token_loss(*args, reduction=reduction, weight_norm="batch")
    den = losses.loss_denominator(*args[1:], reduction=reduction, weight_norm="batch")
    parts = [
      reduce_token_loss(*(a[rows] for a in args), reduction=reduction, weight_norm="batch", denominator=den).loss
      for rows in (slice(0, 1), slice(1, 2), slice(2, 3))  # one shape: one compile
    ]
    np.testing.assert_allclose(sum(parts), whole.loss, rtol=1e-6)


def test_zero_weight_sequence_gets_no_gradient():
  B, T, V = SEGMENTS_BT.shape + (16,)
  rng = np.random.default_rng(15)
  teacher = sparse_teacher(rng.normal(size=(B, T, V)), 4)
  _, loss_mask_BT, weight_BT = packed_case(15)
  batch = (f32(loss_mask_BT), jnp.asarray(SEGMENTS_BT), f32(weight_BT))

  def loss(logits_BTV, weight_norm):
    token_loss_BT = loss_refs.token_divergence(logits_BTV, teacher, kind="fkl")
    return losses.reduce_token_loss(token_loss_BT, *batch, weight_norm=weight_norm).loss

  logits_BTV = f32(rng.normal(size=(B, T, V)))
  for weight_norm in ("dataset_mean", "batch"):
    grad_BTV = np.asarray(jit(jax.grad(loss), static_argnums=1)(logits_BTV, weight_norm))
    zero_weight_T = SEGMENTS_BT[0] == 3  # SEQ_WEIGHTS[(0, 3)] == 0
    assert np.all(grad_BTV[0, zero_weight_T] == 0)
    assert np.all(grad_BTV[0, SEGMENTS_BT[0] == 0] == 0)  # padding
    trained_BT = (loss_mask_BT > 0) & (weight_BT > 0) & (weight_BT < 9) & (SEGMENTS_BT > 0)
    assert np.all(np.abs(grad_BTV[trained_BT]).sum(-1) > 0)


def test_batch_norm_with_zero_weights_skips():
  token_loss_BT, loss_mask_BT, _ = packed_case(16)
  token_loss_BT[SEGMENTS_BT == 0] = 0.0
  batch = (f32(loss_mask_BT), jnp.asarray(SEGMENTS_BT), jnp.zeros(SEGMENTS_BT.shape))  # every weight 0

  def loss(token_loss_BT):
    out = losses.reduce_token_loss(token_loss_BT, *batch, weight_norm="batch")
    return out.loss, out

  (value, out), grad = jit(jax.value_and_grad(loss, has_aux=True))(f32(token_loss_BT))
  assert float(value) == 0.0 and bool(out.skip) and float(out.denominator) == 0.0
  assert np.all(np.asarray(grad) == 0)
  # No loss tokens at all: nothing to learn either.
  no_mask_BT, ones_BT = jnp.zeros(SEGMENTS_BT.shape), jnp.ones(SEGMENTS_BT.shape)
  empty = reduce_token_loss(f32(token_loss_BT), no_mask_BT, jnp.asarray(SEGMENTS_BT), ones_BT)
  assert float(empty.loss) == 0.0 and bool(empty.skip) and int(empty.num_seqs) == 0


def test_unknown_reduction_modes_raise():
  x_BT = jnp.ones((1, 2))
  with pytest.raises(ValueError, match="token_reduction"):
    reduce_token_loss(x_BT, x_BT, x_BT.astype(jnp.int32), x_BT, reduction="mean")
  with pytest.raises(ValueError, match="weight_norm"):
    reduce_token_loss(x_BT, x_BT, x_BT.astype(jnp.int32), x_BT, weight_norm="global")


def test_sharded_batch_gives_the_same_loss_and_gradients():
  """The train step shards rows over devices: chunked logits and segment sums must not care."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))  # as mesh.py makes them
  rows, replicated = jax.NamedSharding(mesh, jax.P("data")), jax.NamedSharding(mesh, jax.P())
  B, T, V = 8, 6, 20
  hidden_BTD, lm_head_DV, _, teacher = hidden_case(17, B=B, T=T, V=V)
  rng = np.random.default_rng(17)
  segments_BT = jnp.asarray(np.sort(rng.integers(0, 3, size=(B, T)), axis=1)[:, ::-1].copy(), jnp.int32)
  batch = (f32(rng.random((B, T)) < 0.8), segments_BT, f32(rng.uniform(0, 2, size=(B, T))))

  def loss(h, w, teacher, batch):
    div_BT = loss_refs.chunked_token_divergence(h, w, teacher, kind="rkl", chunk_size=4)
    return losses.reduce_token_loss(div_BT, *batch).loss

  value_and_grads = jax.value_and_grad(loss, argnums=(0, 1))
  want_value, want_grads = jit(value_and_grads)(hidden_BTD, lm_head_DV, teacher, batch)
  shardings = dict(in_shardings=(rows, replicated, rows, rows), out_shardings=(replicated, (rows, replicated)))
  sharded = jit(value_and_grads, **shardings)
  hidden_BTD, teacher, batch = jax.device_put((hidden_BTD, teacher, batch), rows)
  value, grads = sharded(hidden_BTD, jax.device_put(lm_head_DV, replicated), teacher, batch)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
