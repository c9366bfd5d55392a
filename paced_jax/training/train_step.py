"""The PACED train step: one pure function from (state, batch) to (state, metrics).

The teacher never runs here: its top-k signal arrives in the batch. Forks change the objective
in `losses.py` (a registered divergence) and `loss_and_metrics` below; `jit_train_step` is the
only place it is compiled. Axis letters: paced_jax/__init__.py.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from paced_jax import mesh as mesh_lib
from paced_jax.config import ExperimentConfig, TrainConfig
from paced_jax.training import chunked_logprobs, losses, weights


class Batch(NamedTuple):
  """Global arrays, every one split over the batch axes on its leading B axis (DESIGN.md section 2).

  Each field's axes and dtype are declared here and nowhere else: `shardings` and `zeros` read them.
  """
  tokens: Annotated[jax.Array, "BT", "int32"]
  positions: Annotated[jax.Array, "BT", "int32"]            # position within its sequence
  segment_ids: Annotated[jax.Array, "BT", "int32"]          # packed sequence id, 0 = padding
  loss_mask: Annotated[jax.Array, "BT", "float32"]          # 1 where the next-token distribution is trained
  weight: Annotated[jax.Array, "BT", "float32"]             # problem weight w(p) of the token's sequence
  teacher_ids: Annotated[jax.Array, "BTK", "int32"]
  teacher_logprobs: Annotated[jax.Array, "BTK", "float32"]  # log-probs under the teacher's full softmax
  teacher_tail: Annotated[jax.Array, "BT", "float32"]       # teacher mass outside the top-k
  pass_bucket: Annotated[jax.Array, "BT", "int32"]          # correct-rollout count of the token's problem (metrics)

  @classmethod
  def fields(cls) -> dict[str, tuple[str, str]]:
    """{field: (axes, dtype)}."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: hints[name].__metadata__ for name in cls._fields}

  @classmethod
  def shardings(cls, mesh: Mesh) -> "Batch":
    return cls(**{name: mesh_lib.batch_sharding(mesh, len(axes)) for name, (axes, _) in cls.fields().items()})

  @classmethod
  def zeros(cls, rows: int, seq_len: int, top_k: int, **dtypes) -> "Batch":
    """Host arrays of zeros; `dtypes` overrides a field's dtype (e.g. teacher_logprobs=np.float16)."""
    sizes = {"B": rows, "T": seq_len, "K": top_k}
    return cls(**{name: np.zeros([sizes[a] for a in axes], dtypes.get(name, dtype))
                  for name, (axes, dtype) in cls.fields().items()})


class TrainState(NamedTuple):
  step: jax.Array
  params: Any       # pure dict of f32 master weights
  opt_state: Any
  rng: jax.Array
  skipped: jax.Array  # updates skipped so far (non-finite, or no weight in the batch)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the compiled step closes over: the experiment's own settings, as given, and what only the
  model, the data and the training stage decide. No setting is redeclared here."""
  graphdef: nnx.GraphDef
  train: TrainConfig = TrainConfig()
  weight_norm: str = "dataset_mean"      # the experiment's weights.norm
  divergence: str = "fkl"                # this stage's (two_stage runs fkl, then rkl)
  divergence_params: Any = None          # losses.hyperparameters(divergence, train.loss_params)
  valid_vocab: int | None = None         # student logit rows beyond the tokenizer are ignored
  num_pass_buckets: int = 9              # R + 1


def step_config(cfg: ExperimentConfig, graphdef: nnx.GraphDef, *, divergence: str, valid_vocab: int | None,
                num_pass_buckets: int) -> StepConfig:
  """The step's settings for one stage of an experiment; the divergence name and its
  hyperparameters are checked against the registry (a ConfigError names the field)."""
  return StepConfig(graphdef, cfg.train, cfg.weights.norm, divergence,
                    losses.hyperparameters(divergence, cfg.train.loss_params), valid_vocab, num_pass_buckets)


def learning_rate(cfg: StepConfig) -> optax.Schedule:
  if cfg.train.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.train.lr, max(cfg.train.warmup_steps, 1), max(cfg.train.steps, 2))
  if cfg.train.warmup_steps:
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.train.lr, cfg.train.warmup_steps),
                                 optax.constant_schedule(cfg.train.lr)], [cfg.train.warmup_steps])
  return optax.constant_schedule(cfg.train.lr)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm as one scale factor: optax divides (g / norm * max) under a select, and
  XLA keeps that divided copy of every gradient for Adam's two moments (+0.4 GiB for 135M parameters)."""
  def scale(grads, params=None):
    del params
    factor = jnp.minimum(1.0, max_norm / jnp.maximum(optax.global_norm(grads), jnp.finfo(jnp.float32).tiny))
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)
  return optax.stateless(scale)


def make_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
  return optax.chain(clip_by_global_norm(cfg.train.grad_clip),
                     optax.adamw(learning_rate(cfg), b1=cfg.train.b1, b2=cfg.train.b2, weight_decay=cfg.train.weight_decay))


def init_state(params, cfg: StepConfig, seed: int = 0) -> TrainState:
  return TrainState(jnp.int32(0), params, make_optimizer(cfg).init(params), jax.random.PRNGKey(seed), jnp.int32(0))


def loss_and_metrics(params, batch: Batch, denominator, cfg: StepConfig):
  """Weighted distillation loss of one (micro-)batch, and the sums its metrics are made of."""
  model = nnx.merge(cfg.graphdef, params)
  hidden_BTD = model(batch.tokens, batch.positions, batch.segment_ids)
  hidden_BTD = jax.lax.with_sharding_constraint(hidden_BTD, P(mesh_lib.BATCH_AXES, None, None))
  teacher = losses.TeacherSignal(batch.teacher_ids, batch.teacher_logprobs, batch.teacher_tail)
  head, head_axes = model.output_head()
  log_q_BTN = chunked_logprobs.chunked_student_bucket_logprobs(
      hidden_BTD, head, batch.teacher_ids, chunk_size=cfg.train.loss_chunk, head_axes=head_axes,
      temperature=cfg.train.temperature, vocab_size=cfg.valid_vocab)
  log_p_BTN = losses.teacher_bucket_logprobs(teacher)
  token_loss_BT = losses.divergence(log_p_BTN, log_q_BTN, cfg.divergence, cfg.divergence_params)
  red = losses.reduce_token_loss(token_loss_BT, batch.loss_mask, batch.segment_ids, batch.weight,
                                 reduction=cfg.train.token_reduction, weight_norm=cfg.weight_norm, denominator=denominator)
  mask_BT = (batch.loss_mask > 0) & (batch.segment_ids > 0)
  detached_q = jax.lax.stop_gradient(log_q_BTN)
  T = batch.tokens.shape[1]
  bucket_BE = jnp.round(losses.sequence_sums(jnp.where(mask_BT, batch.pass_bucket, 0).astype(jnp.float32),
                                             batch.segment_ids, T)
                        / jnp.maximum(losses.sequence_sums(mask_BT.astype(jnp.float32), batch.segment_ids, T), 1.0))
  bucket_loss, bucket_count = weights.per_bucket_sums(red.seq_loss_BE, bucket_BE.astype(jnp.int32),
                                                      red.seq_valid_BE, cfg.num_pass_buckets)
  sums = {
      "fkl_sum": jnp.sum(jnp.where(mask_BT, losses.forward_kl(log_p_BTN, detached_q), 0.0)),
      "rkl_sum": jnp.sum(jnp.where(mask_BT, losses.reverse_kl(log_p_BTN, detached_q), 0.0)),
      "tokens": red.num_tokens.astype(jnp.float32),
      "sequences": red.num_seqs.astype(jnp.float32),
      "weight_sum": jnp.sum(jnp.where(red.seq_valid_BE, red.seq_weight_BE, 0.0)),
      "weight_sq_sum": jnp.sum(jnp.where(red.seq_valid_BE, red.seq_weight_BE ** 2, 0.0)),
      "bucket_loss_sum": bucket_loss,
      "bucket_count": bucket_count,
  }
  return red.loss, sums


def accumulate_gradients(params, batch: Batch, cfg: StepConfig):
  """(loss, metric sums, gradients) of the whole batch, summed over `cfg.train.micro_batches` slices."""
  denominator = losses.loss_denominator(batch.loss_mask, batch.segment_ids, batch.weight,
                                        reduction=cfg.train.token_reduction, weight_norm=cfg.weight_norm)
  micro = jax.tree.map(lambda x: x.reshape(cfg.train.micro_batches, -1, *x.shape[1:]), batch)
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
  def apply(state: TrainState) -> TrainState:
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
    return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)

  # A branch, not a select of old and new: each moment and parameter is updated in its donated
  # buffer (a jnp.where kept both old and new alive: 0.7 GiB of moment copies for the demo's 135M model).
  new_state = jax.lax.cond(ok, apply, lambda s: s, state)
  new_state = new_state._replace(step=state.step + 1, skipped=state.skipped + (~ok).astype(jnp.int32))
  tokens = jnp.maximum(sums["tokens"], 1.0)
  metrics = {
      "loss": loss, "grad_norm": grad_norm, "skipped": (~ok).astype(jnp.int32),
      "fkl": sums["fkl_sum"] / tokens, "rkl": sums["rkl_sum"] / tokens,
      "tokens": sums["tokens"], "sequences": sums["sequences"],
      "ess": weights.effective_sample_size(sums["weight_sum"], sums["weight_sq_sum"]),
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
  step = jax.jit(lambda state, batch: train_step(state, batch, cfg=cfg),
                 in_shardings=(state_sharding, Batch.shardings(mesh)),
                 out_shardings=(state_sharding, NamedSharding(mesh, P())), donate_argnums=(0,))

  def run(state: TrainState, batch: Batch):
    with jax.set_mesh(mesh):  # the activation constraints inside name mesh axes
      return step(state, batch)
  # Ahead-of-time use (memory analysis, compiling for a TPU topology):
  #   with jax.set_mesh(mesh): run.jitted.lower(state, batch).compile()
  run.jitted = step
  return run
