"""Distillation losses: teacher-student divergences per token, and their reduction to one loss.

Every divergence works on the sparse "k+1 bucket" form of METHOD.md section 4. The teacher is
its top-k token ids with their log-probs under its *full* softmax, plus the mass outside the
top-k (its tail). The student's full softmax is folded onto the same k+1 buckets, and the
divergence is taken between the two (k+1)-bucket distributions. That is exact when k = V and a
lower bound otherwise (merging buckets never increases a KL). Dense teacher logits are the
k = V case (tests/loss_refs.py: `dense_to_sparse`), so each divergence has exactly one implementation.

  student logits [B,T,V] --> bucket log-probs [B,T,N] --> divergence [B,T] --> loss []
  (or hidden states, in      (teacher's and student's)    (DIVERGENCES)       (per packed sequence,
   chunks of T: chunked_logprobs.py)                                           weighted, reduced)

Axis letters as in paced_jax/__init__.py (here: B rows, T positions, V vocabulary, K teacher top-k,
N = K + 1 buckets, E packed sequences per row). All math is float32, whatever the inputs' dtype.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from paced_jax.config import ConfigError, WEIGHT_NORMS

F32 = jnp.float32
REDUCTIONS = ("seq_mean", "token_sum")

# Smallest tail mass the log sees, for the teacher and the student alike; see `log_tail`.
TAIL_FLOOR = 1e-10


class TeacherSignal(NamedTuple):
  """The teacher's next-token distribution at every position, in k+1 bucket form."""

  ids_BTK: jax.Array  # int32 ids of the teacher's top-k tokens (distinct within a position)
  logprobs_BTK: jax.Array  # their log-probs under the teacher's full softmax, temperature applied
  tail_BT: jax.Array  # teacher mass outside the top-k (= 1 - sum exp(logprobs_BTK), best summed directly)


# ---------------------------------------------------------------------------------------------
# Bucket log-probs.


def log_tail(tail_mass: jax.Array) -> jax.Array:
  # A tail can be empty: k = V, a top-k holding all the mass to float32 precision, or a stored
  # 1 - sum(top-k) rounded to 0. log(0) = -inf would make RKL infinite and the gradient nan
  # (0 / 0 in the log's derivative), so both tails are floored. Above the floor nothing changes
  # (a floor added to the mass instead would bias RKL by q_tail * eps / p_tail); two empty tails
  # still contribute exactly 0; a student tail the teacher rounded to 0 costs a finite
  # q_tail * log(q_tail / TAIL_FLOOR). Below the floor the gradient to the tail is 0, but a tail
  # that small no longer matters to any divergence.
  return jnp.log(jnp.maximum(tail_mass, TAIL_FLOOR))


def teacher_bucket_logprobs(teacher: TeacherSignal) -> jax.Array:
  """log p over the k+1 buckets, [B, T, N]."""
  log_tail_BT = log_tail(teacher.tail_BT.astype(F32))
  return jnp.concatenate([teacher.logprobs_BTK.astype(F32), log_tail_BT[..., None]], -1)


def student_bucket_logprobs(
  student_logits_BTV: jax.Array,
  teacher_ids_BTK: jax.Array,
  *,
  temperature: float = 1.0,
  vocab_size: int | None = None,
) -> jax.Array:
  """log q over the teacher's k+1 buckets, [B, T, N], from the student's full softmax.

  `vocab_size`: logit rows from this index on are padding (e.g. 152064 rows for a 151936-token
  tokenizer) and get no probability. `temperature` divides the student's logits; the teacher
  signal must have been computed at the same temperature.
  """
  return fold_onto_buckets(scaled_logits(student_logits_BTV, temperature, vocab_size), teacher_ids_BTK)[0]


def scaled_logits(logits_BTV: jax.Array, temperature: float, vocab_size: int | None) -> jax.Array:
  """float32 logits / temperature, with padding rows (from `vocab_size` on) at -inf."""
  logits_BTV = logits_BTV.astype(F32) / temperature
  V = logits_BTV.shape[-1]
  if vocab_size is not None and vocab_size < V:
    logits_BTV = jnp.where(jnp.arange(V) < vocab_size, logits_BTV, -jnp.inf)
  return logits_BTV


def fold_onto_buckets(logits_BTV: jax.Array, teacher_ids_BTK: jax.Array):
  """The student's softmax folded onto the teacher's k+1 buckets: (log q [B, T, N], and the
  per-position max, normaliser z and outside-the-top-k sum o of e^(logits - max), which
  chunked_logprobs.py's backward reuses)."""
  # One exp over the vocabulary serves both the normaliser and the tail (on CPU the exps are
  # most of this function's time; the max only stabilises and cancels, hence no gradient).
  max_BT1 = jax.lax.stop_gradient(logits_BTV.max(-1, keepdims=True))
  shifted_BTV = logits_BTV - max_BT1
  e_BTV = jnp.exp(shifted_BTV)
  z_BT = e_BTV.sum(-1)
  log_q_BTK = jnp.take_along_axis(shifted_BTV, teacher_ids_BTK, axis=-1) - jnp.log(z_BT)[..., None]
  # The tail is summed over the tokens outside the top-k rather than taken as 1 - sum(top-k):
  # that difference cancels catastrophically in float32 (a true tail of 1e-9 comes out as 0 or
  # 1e-7), and d log(1 - s) = -1/(1 - s) then explodes. A sum of small positive terms is
  # accurate to relative precision, and so is its gradient.
  outside_BT = jnp.put_along_axis(e_BTV, teacher_ids_BTK, 0.0, axis=-1, inplace=False).sum(-1)
  log_q_BTN = jnp.concatenate([log_q_BTK, log_tail(outside_BT / z_BT)[..., None]], -1)
  return log_q_BTN, max_BT1, z_BT, outside_BT


# ---------------------------------------------------------------------------------------------
# The divergence registry: name -> function. Config validation, the trainer, the SNR stage and the
# AOT tool read their lists from it. A function's keyword-only arguments are its hyperparameters;
# the config sets them as `train.loss_params.<name>.<argument>` (presets.default_config lists
# every one with its default). A new divergence is one decorated function below plus its test.


@dataclasses.dataclass(frozen=True)
class Divergence:
  fn: Callable[..., jax.Array]  # (log_p_BTN, log_q_BTN, **hyperparameters) -> [B, T]
  params: type  # frozen dataclass of the keyword-only hyperparameters (no fields: none)


DIVERGENCES: dict[str, Divergence] = {}


def register(name: str):
  """Decorator: make `fn(log_p_BTN, log_q_BTN, *, hyperparameters=defaults)` the divergence `name`."""
  def add(fn):
    fields = [(n, p.annotation if isinstance(p.annotation, type) else float, dataclasses.field(default=p.default))
              for n, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    DIVERGENCES[name] = Divergence(fn, dataclasses.make_dataclass(f"{name}_params", fields, frozen=True))
    return fn
  return add


def hyperparameters(name: str, given: Mapping[str, Mapping[str, Any]] | None = None, where: str = "config.train"):
  """The frozen hyperparameters of divergence `name`: its defaults updated by `given[name]`.

  `given` is the config's `train.loss_params` ({divergence: {argument: value}}); every key is checked
  against the registry, so a mistyped name or argument is an error naming the field.
  """
  if name not in DIVERGENCES:
    raise ConfigError(f"{where}.loss: {name!r} is not a registered divergence ({', '.join(DIVERGENCES)})")
  given = dict(given or {})
  for other, values in given.items():
    if other not in DIVERGENCES:
      raise ConfigError(f"{where}.loss_params.{other}: no such divergence ({', '.join(DIVERGENCES)})")
    known = {f.name for f in dataclasses.fields(DIVERGENCES[other].params)}
    for key in values:
      if key not in known:
        raise ConfigError(f"{where}.loss_params.{other}.{key}: {other} has no such hyperparameter "
                          f"({', '.join(sorted(known)) or 'it has none'})")
  return DIVERGENCES[name].params(**given.get(name, {}))


def divergence(log_p_BTN: jax.Array, log_q_BTN: jax.Array, name: str, params=None) -> jax.Array:
  """Per-token divergence [B, T] of the registered `name`, with `params` from `hyperparameters` (None: defaults)."""
  entry = DIVERGENCES[name]
  return entry.fn(log_p_BTN, log_q_BTN, **dataclasses.asdict(params if params is not None else entry.params()))


# ---------------------------------------------------------------------------------------------
# Divergences between two bucket distributions; each maps [B, T, N] x [B, T, N] -> [B, T].


def _kl(log_a_BTN: jax.Array, log_b_BTN: jax.Array) -> jax.Array:
  """KL(a || b) = sum_n a (log a - log b), where a bucket with a = 0 contributes 0."""
  a_BTN = jnp.exp(log_a_BTN)
  # `where` before the product: 0 * (-inf - -inf) would be nan, in the value and the gradient.
  log_ratio_BTN = jnp.where(a_BTN > 0, log_a_BTN - log_b_BTN, 0.0)
  return jnp.sum(a_BTN * log_ratio_BTN, axis=-1)


@register("fkl")
def forward_kl(log_p_BTN: jax.Array, log_q_BTN: jax.Array) -> jax.Array:
  """KL(p || q): mass-covering; the distillation track's loss."""
  return _kl(log_p_BTN, log_q_BTN)


@register("rkl")
def reverse_kl(log_p_BTN: jax.Array, log_q_BTN: jax.Array) -> jax.Array:
  """KL(q || p): mode-seeking; the self-distillation track's loss. Differentiates both q factors."""
  return _kl(log_q_BTN, log_p_BTN)


@register("akl")
def adaptive_kl(log_p_BTN: jax.Array, log_q_BTN: jax.Array, *, mu: float = 0.5) -> jax.Array:
  """AKL (Wu et al. 2024): FKL and RKL mixed by how far q is from p on the teacher's head vs tail.

  The head is the teacher's most likely buckets whose cumulative mass is <= mu (the top one
  always). The tail bucket is always tail: it merges the tokens the teacher ranks below its
  top-k, which are tail tokens whenever the top-k holds more than mu of the mass (the only
  difference from a dense AKL arises when it holds less). The mixing weights are constants
  for the gradient (q detached), as in the paper.
  """
  p_BTN = jnp.exp(log_p_BTN)
  gap_BTN = jnp.abs(p_BTN - jax.lax.stop_gradient(jnp.exp(log_q_BTN)))
  # Rank the top-k buckets by teacher probability; head membership is a prefix of that order.
  order_BTK = jnp.argsort(p_BTN[..., :-1], axis=-1, descending=True)
  p_sorted_BTK = jnp.take_along_axis(p_BTN[..., :-1], order_BTK, axis=-1)
  gap_sorted_BTK = jnp.take_along_axis(gap_BTN[..., :-1], order_BTK, axis=-1)
  in_head_BTK = (jnp.cumsum(p_sorted_BTK, axis=-1) <= mu).at[..., 0].set(True)
  g_head_BT = jnp.sum(jnp.where(in_head_BTK, gap_sorted_BTK, 0.0), axis=-1)
  g_all_BT = jnp.sum(gap_BTN, axis=-1)  # = g_head + g_tail
  # p == q everywhere: both KLs are 0 and so is their gradient; any mixing weight will do.
  head_share_BT = jnp.where(g_all_BT > 0, g_head_BT / jnp.where(g_all_BT > 0, g_all_BT, 1.0), 0.5)
  fkl_BT, rkl_BT = forward_kl(log_p_BTN, log_q_BTN), reverse_kl(log_p_BTN, log_q_BTN)
  return head_share_BT * fkl_BT + (1.0 - head_share_BT) * rkl_BT


@register("jsd")
def jensen_shannon(log_p_BTN: jax.Array, log_q_BTN: jax.Array, *, beta: float = 0.5) -> jax.Array:
  """JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m), with m = beta p + (1 - beta) q."""
  if not 0.0 < beta < 1.0:
    raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
  log_m_BTN = jnp.logaddexp(jnp.log(beta) + log_p_BTN, jnp.log1p(-beta) + log_q_BTN)
  return beta * _kl(log_p_BTN, log_m_BTN) + (1.0 - beta) * _kl(log_q_BTN, log_m_BTN)


# ---------------------------------------------------------------------------------------------
# Reduction over packed sequences.


def sequence_sums(x_BT: jax.Array, segment_ids_BT: jax.Array, num_segments: int) -> jax.Array:
  """Sum of x over each packed sequence, [B, S]: column s - 1 holds segment id s (0 = padding).

  Ids above `num_segments` are dropped; `num_segments = T` can never drop one.
  """
  row_sums = jax.vmap(lambda x_T, ids_T: jax.ops.segment_sum(x_T, ids_T, num_segments=num_segments + 1))
  return row_sums(x_BT, segment_ids_BT)[:, 1:]


class Reduced(NamedTuple):
  """The loss and what the step's metrics need. Sequence s of row b is at [b, s - 1]."""

  loss: jax.Array  # scalar: numerator / denominator, 0 when the denominator is 0
  numerator: jax.Array  # scalar
  denominator: jax.Array  # scalar, see `loss_denominator`
  skip: jax.Array  # bool scalar: the denominator is 0, so the step has nothing to learn from
  seq_loss_BE: jax.Array  # unweighted mean divergence over each sequence's loss tokens (or 0)
  seq_weight_BE: jax.Array  # each sequence's problem weight (0 where there is none)
  seq_valid_BE: jax.Array  # bool: a sequence with at least one loss token is there
  num_seqs: jax.Array  # scalar: sum(seq_valid_BE)
  num_tokens: jax.Array  # scalar: loss tokens in the batch


def _check_modes(reduction: str, weight_norm: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(f"unknown token_reduction {reduction!r}; expected one of {REDUCTIONS}")
  if weight_norm not in WEIGHT_NORMS:
    raise ValueError(f"unknown weight_norm {weight_norm!r}; expected one of {WEIGHT_NORMS}")


def _sequence_stats(loss_mask_BT, segment_ids_BT, weight_BT, num_segments):
  """Loss-token mask [B, T], and per sequence: loss-token count, weight, validity [B, S]."""
  mask_BT = (loss_mask_BT > 0) & (segment_ids_BT > 0)
  tokens_BE = sequence_sums(mask_BT.astype(F32), segment_ids_BT, num_segments)
  valid_BE = tokens_BE > 0
  tokens_safe_BE = jnp.where(valid_BE, tokens_BE, 1.0)
  # Every token carries its sequence's weight, so the mean over loss tokens is that weight.
  weight_sum_BE = sequence_sums(jnp.where(mask_BT, weight_BT.astype(F32), 0.0), segment_ids_BT, num_segments)
  weight_BE = weight_sum_BE / tokens_safe_BE
  return mask_BT, tokens_safe_BE, weight_BE, valid_BE


def loss_denominator(
  loss_mask_BT: jax.Array,
  segment_ids_BT: jax.Array,
  weight_BT: jax.Array,
  *,
  reduction: str = "seq_mean",
  weight_norm: str = "dataset_mean",
  max_segments: int | None = None,
) -> jax.Array:
  """What the summed weighted loss is divided by; it depends on the data only, not the params.

    seq_mean,  dataset_mean / none:  number of sequences (with at least one loss token)
    seq_mean,  batch:                sum of their weights
    token_sum, dataset_mean / none:  number of loss tokens
    token_sum, batch:                sum of the loss tokens' weights
  With gradient accumulation, compute it once over the whole batch and pass it to every
  micro-batch's `reduce_token_loss`, so that the micro-batch losses add up to the batch loss.
  """
  _check_modes(reduction, weight_norm)
  num_segments = max_segments or loss_mask_BT.shape[1]
  mask_BT, _, weight_BE, valid_BE = _sequence_stats(loss_mask_BT, segment_ids_BT, weight_BT, num_segments)
  return _denominator(mask_BT, weight_BT, weight_BE, valid_BE, reduction, weight_norm)


def _denominator(mask_BT, weight_BT, weight_BE, valid_BE, reduction, weight_norm):
  if reduction == "seq_mean":
    return jnp.sum(jnp.where(valid_BE, weight_BE, 0.0)) if weight_norm == "batch" else jnp.sum(valid_BE).astype(F32)
  if weight_norm == "batch":
    return jnp.sum(jnp.where(mask_BT, weight_BT.astype(F32), 0.0))
  return jnp.sum(mask_BT).astype(F32)


def reduce_token_loss(
  token_loss_BT: jax.Array,
  loss_mask_BT: jax.Array,
  segment_ids_BT: jax.Array,
  weight_BT: jax.Array,
  *,
  reduction: str = "seq_mean",
  weight_norm: str = "dataset_mean",
  max_segments: int | None = None,
  denominator: jax.Array | None = None,
) -> Reduced:
  """Per-token divergences of packed rows -> one weighted loss (METHOD.md section 4).

  A sequence is a (row, segment id > 0) pair; its loss tokens are where `loss_mask_BT` is set.
    seq_mean:   loss = sum_i w_i L_i / denominator, L_i = mean divergence over sequence i's tokens
    token_sum:  loss = sum_t w_t l_t / denominator, over all loss tokens t
  with the denominator of `loss_denominator` (computed here unless given). `dataset_mean` and
  `none` weights arrive normalised (or not) from weights.py; `batch` makes the denominator the
  weight sum. When it is 0 the loss is 0 (with no gradient) and `skip` is set.
  `max_segments` bounds the segment ids of a row (default T, which always suffices).
  """
  _check_modes(reduction, weight_norm)
  num_segments = max_segments or token_loss_BT.shape[1]
  mask_BT, tokens_safe_BE, weight_BE, valid_BE = _sequence_stats(loss_mask_BT, segment_ids_BT, weight_BT, num_segments)
  # `where`, not a product with the mask: positions outside the loss may hold inf or nan.
  loss_BT = jnp.where(mask_BT, token_loss_BT.astype(F32), 0.0)
  seq_loss_BE = sequence_sums(loss_BT, segment_ids_BT, num_segments) / tokens_safe_BE
  if reduction == "seq_mean":
    numerator = jnp.sum(jnp.where(valid_BE, weight_BE * seq_loss_BE, 0.0))
  else:
    numerator = jnp.sum(jnp.where(mask_BT, weight_BT.astype(F32), 0.0) * loss_BT)
  if denominator is None:
    denominator = _denominator(mask_BT, weight_BT, weight_BE, valid_BE, reduction, weight_norm)
  has_data = denominator > 0
  loss = jnp.where(has_data, numerator / jnp.where(has_data, denominator, 1.0), 0.0)
  return Reduced(
    loss=loss,
    numerator=numerator,
    denominator=denominator,
    skip=~has_data,
    seq_loss_BE=jnp.where(valid_BE, seq_loss_BE, 0.0),
    seq_weight_BE=weight_BE,
    seq_valid_BE=valid_BE,
    num_seqs=jnp.sum(valid_BE),
    num_tokens=jnp.sum(mask_BT),
  )
