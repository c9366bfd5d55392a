"""Test-side wrappers around training/losses.py: the dense k = V teacher signal and logits-in divergences."""

import jax
import jax.numpy as jnp

from paced_jax.training import chunked_logprobs, losses


def dense_to_sparse(teacher_logits_BTV, *, vocab_size=None, temperature=1.0) -> losses.TeacherSignal:
  """The k = V teacher signal of dense logits: every real token is a bucket, the tail is empty."""
  logits_BTV = teacher_logits_BTV[..., :vocab_size].astype(jnp.float32) / temperature
  B, T, V = logits_BTV.shape
  ids_BTV = jnp.broadcast_to(jnp.arange(V, dtype=jnp.int32), (B, T, V))
  return losses.TeacherSignal(ids_BTV, jax.nn.log_softmax(logits_BTV, axis=-1), jnp.zeros((B, T), jnp.float32))


def _params(kind, akl_mu, jsd_beta):
  return losses.hyperparameters(kind, {"akl": {"mu": akl_mu}, "jsd": {"beta": jsd_beta}})


def token_divergence(student_logits_BTV, teacher: losses.TeacherSignal, *, kind, temperature=1.0, vocab_size=None,
                     akl_mu=0.5, jsd_beta=0.5):
  """Per-token divergence [B, T] from the student's full logits (the teacher signal at the same temperature)."""
  log_q_BTN = losses.student_bucket_logprobs(student_logits_BTV, teacher.ids_BTK, temperature=temperature,
                                             vocab_size=vocab_size)
  return losses.divergence(losses.teacher_bucket_logprobs(teacher), log_q_BTN, kind, _params(kind, akl_mu, jsd_beta))


def chunked_token_divergence(hidden_BTD, head, teacher: losses.TeacherSignal, *, kind, chunk_size, head_axes="dv",
                             temperature=1.0, vocab_size=None, akl_mu=0.5, jsd_beta=0.5):
  """`token_divergence` of the logits `hidden @ head` ([D, V], or [V, D] with head_axes "vd"), made chunk by chunk over T."""
  log_q_BTN = chunked_logprobs.chunked_student_bucket_logprobs(
      hidden_BTD, head, teacher.ids_BTK, chunk_size=chunk_size, head_axes=head_axes, temperature=temperature,
      vocab_size=vocab_size)
  return losses.divergence(losses.teacher_bucket_logprobs(teacher), log_q_BTN, kind, _params(kind, akl_mu, jsd_beta))
