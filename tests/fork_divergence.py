"""A research fork's new divergence, as the README tells a fork to add one: one registered function.

Its keyword-only argument is its hyperparameter: --config.train.loss=scaled_fkl
--config.train.loss_params.scaled_fkl.scale=3 selects and sets it; nothing else changes.
"""

from paced_jax.training import losses


@losses.register("scaled_fkl")
def scaled_forward_kl(log_p_BTN, log_q_BTN, *, scale: float = 1.0):
  """scale * KL(p || q)."""
  return scale * losses.forward_kl(log_p_BTN, log_q_BTN)
