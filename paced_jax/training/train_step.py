"""The PACED train step: one pure function from (state, batch) to (state, metrics).

Axis legend: B rows, T tokens per row, K teacher top-k, N = K + 1 buckets, S packed sequences
per row, M micro-batches, G pass-rate buckets (K_rollouts + 1).

The teacher never runs here: its top-k signal arrives in the batch. Forks change the objective
in `losses.py` and `loss_and_metrics` below; `jit_train_step` is the only place it is compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from paced_jax import mesh as mesh_lib
from paced_jax.training import chunked_logprobs
from paced_jax.training import losses
from paced_jax.training import weights


class Batch(NamedTuple):
  """Global arrays, sharded over the batch axes (DESIGN.md section 2)."""
  tokens: jax.Array            # int32 [B, T]
  positions: jax.Array         # int32 [B, T] position within its sequence
  segment_ids: jax.Array       # int32 [B, T] packed sequence id, 0 = padding
  loss_mask: jax.Array         # [B, T] 1 where the next-token distribution is trained
  weight: jax.Array            # f32 [B, T] problem weight w(p) of the token's sequence
  teacher_ids: jax.Array       # int32 [B, T, K]
  teacher_logprobs: jax.Array  # [B, T, K] log-probs under the teacher's full softmax
  teacher_tail: jax.Array      # f32 [B, T] teacher mass outside the top-k
  pass_bucket: jax.Array       # int32 [B, T] correct-rollout count of the token's problem (metrics)


class TrainState(NamedTuple):
  step: jax.Array
  params: Any       # pure dict of f32 master weights
  opt_state: Any
  rng: jax.Array
  skipped: jax.Array  # updates skipped so far (non-finite, or no weight in the batch)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  graphdef: nnx.GraphDef
  divergence: str = "fkl"           # fkl | rkl | akl | jsd
  akl_mu: float = 0.5
  jsd_beta: float = 0.5
  temperature: float = 1.0
  valid_vocab: int | None = None    # student logit rows beyond the tokenizer are ignored
  token_reduction: str = "seq_mean"
  weight_norm: str = "dataset_mean"
  loss_chunk: int = 128
  micro_batches: int = 1
  num_pass_buckets: int = 9         # K_rollouts + 1
  # optimizer
  lr: float = 1e-6
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int = 1
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.999


def learning_rate(cfg: StepConfig) -> optax.Schedule:
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1), max(cfg.total_steps, 2))
  if cfg.warmup_steps:
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps),
                                 optax.constant_schedule(cfg.lr)], [cfg.warmup_steps])
  return optax.constant_schedule(cfg.lr)


def make_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))


def init_state(params, cfg: StepConfig, seed: int = 0) -> TrainState:
  return TrainState(jnp.int32(0), params, make_optimizer(cfg).init(params), jax.random.PRNGKey(seed), jnp.int32(0))


def loss_and_metrics(params, batch: Batch, denominator, cfg: StepConfig):
  """Weighted distillation loss of one (micro-)batch, and the sums its metrics are made of."""
  model = nnx.merge(cfg.graphdef, params)
  hidden_BTD = model(batch.tokens, batch.positions, batch.segment_ids)
  hidden_BTD = jax.lax.with_sharding_constraint(hidden_BTD, P(mesh_lib.BATCH_AXES, None, None))
  teacher = losses.TeacherSignal(batch.teacher_ids, batch.teacher_logprobs, batch.teacher_tail)
  log_q_BTN = chunked_logprobs.chunked_student_bucket_logprobs(
      hidden_BTD, model.lm_head_DV(), batch.teacher_ids, chunk_size=cfg.loss_chunk,
      temperature=cfg.temperature, vocab_size=cfg.valid_vocab)
  log_p_BTN = losses.teacher_bucket_logprobs(teacher)
  token_loss_BT = losses.divergence(log_p_BTN, log_q_BTN, kind=cfg.divergence, akl_mu=cfg.akl_mu,
                                    jsd_beta=cfg.jsd_beta)
  red = losses.reduce_token_loss(token_loss_BT, batch.loss_mask, batch.segment_ids, batch.weight,
                                 reduction=cfg.token_reduction, weight_norm=cfg.weight_norm, denominator=denominator)
  mask_BT = (batch.loss_mask > 0) & (batch.segment_ids > 0)
  detached_q = jax.lax.stop_gradient(log_q_BTN)
  T = batch.tokens.shape[1]
  bucket_BS = jnp.round(losses.sequence_sums(jnp.where(mask_BT, batch.pass_bucket, 0).astype(jnp.float32),
                                             batch.segment_ids, T)
                        / jnp.maximum(losses.sequence_sums(mask_BT.astype(jnp.float32), batch.segment_ids, T), 1.0))
  bucket_loss, bucket_count = weights.per_bucket_sums(red.seq_loss_BS, bucket_BS.astype(jnp.int32),
                                                      red.seq_valid_BS, cfg.num_pass_buckets)
  sums = {
      "fkl_sum": jnp.sum(jnp.where(mask_BT, losses.forward_kl(log_p_BTN, detached_q), 0.0)),
      "rkl_sum": jnp.sum(jnp.where(mask_BT, losses.reverse_kl(log_p_BTN, detached_q), 0.0)),
      "tokens": red.num_tokens.astype(jnp.float32),
      "sequences": red.num_seqs.astype(jnp.float32),
      "weight_sum": jnp.sum(jnp.where(red.seq_valid_BS, red.seq_weight_BS, 0.0)),
      "weight_sq_sum": jnp.sum(jnp.where(red.seq_valid_BS, red.seq_weight_BS ** 2, 0.0)),
      "bucket_loss_sum": bucket_loss,
      "bucket_count": bucket_count,
  }
  return red.loss, sums


def accumulate_gradients(params, batch: Batch, cfg: StepConfig):
  """(loss, metric sums, gradients) of the whole batch, summed over `cfg.micro_batches` slices."""
  denominator = losses.loss_denominator(batch.loss_mask, batch.segment_ids, batch.weight,
                                        reduction=cfg.token_reduction, weight_norm=cfg.weight_norm)
  micro = jax.tree.map(lambda x: x.reshape(cfg.micro_batches, -1, *x.shape[1:]), batch)
  grad_fn = jax.value_and_grad(lambda p, b: loss_and_metrics(p, b, denominator, cfg), has_aux=True)

  def accumulate(carry, micro_batch):
    return jax.tree.map(jnp.add, carry, grad_fn(params, micro_batch)), None

  shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  ((loss, sums), grads), _ = jax.lax.scan(accumulate, zeros, micro)
  sums["denominator"] = denominator
  return loss, sums, grads


def train_step(state: TrainState, batch: Batch, *, cfg: StepConfig) -> tuple[TrainState, dict]:
  """Gradient-accumulated, clipped AdamW step; a non-finite or weightless step changes nothing."""
  loss, sums, grads = accumulate_gradients(state.params, batch, cfg)
  grad_norm = optax.global_norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (sums["denominator"] > 0)
  updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = TrainState(state.step + 1, keep(new_params, state.params), keep(opt_state, state.opt_state),
                         state.rng, state.skipped + (~ok).astype(jnp.int32))
  tokens = jnp.maximum(sums["tokens"], 1.0)
  metrics = {
      "loss": loss, "grad_norm": grad_norm, "skipped": (~ok).astype(jnp.int32),
      "fkl": sums["fkl_sum"] / tokens, "rkl": sums["rkl_sum"] / tokens,
      "tokens": sums["tokens"], "sequences": sums["sequences"],
      "ess": sums["weight_sum"] ** 2 / jnp.maximum(sums["weight_sq_sum"], 1e-30),
      "bucket_loss": sums["bucket_loss_sum"] / jnp.maximum(sums["bucket_count"], 1.0),
      "bucket_count": sums["bucket_count"],
  }
  return new_state, metrics


def state_shardings(state: TrainState, param_shardings, mesh: Mesh, cfg: StepConfig) -> TrainState:
  """Optimizer moments shard like their parameters; scalars are replicated."""
  replicated = NamedSharding(mesh, P())
  opt = optax.tree_map_params(make_optimizer(cfg), lambda _, s: s, state.opt_state, param_shardings,
                              transform_non_params=lambda _: replicated)
  return TrainState(replicated, param_shardings, opt, replicated, replicated)


def jit_train_step(cfg: StepConfig, state_sharding: TrainState, mesh: Mesh):
  """The one compiled train step: shardings declared at the boundary, the state donated."""
  batch_sharding = Batch(*(mesh_lib.batch_sharding(mesh, n) for n in (2, 2, 2, 2, 2, 3, 3, 2, 2)))
  step = jax.jit(lambda state, batch: train_step(state, batch, cfg=cfg),
                 in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, NamedSharding(mesh, P())), donate_argnums=(0,))

  def run(state: TrainState, batch: Batch):
    with jax.set_mesh(mesh):  # the activation constraints inside name mesh axes
      return step(state, batch)
  # Ahead-of-time use (memory analysis, compiling for a TPU topology):
  #   with jax.set_mesh(mesh): run.jitted.lower(state, batch).compile()
  run.jitted = step
  return run
