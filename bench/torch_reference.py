"""The PyTorch side of the train-step benchmarks: paced_jax's loss, written in torch."""

from __future__ import annotations

import math


def bucket_forward_kl(logits_BTV, ids_BTK, t_logp_BTK, t_tail_BT, mask_BT, valid_vocab: int):
  """The same per-token forward KL over k+1 buckets as losses.py, mean over the loss tokens."""
  import torch
  logits = logits_BTV.float()
  if valid_vocab < logits.shape[-1]:
    logits = logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) >= valid_vocab, float("-inf"))
  log_q_BTV = torch.log_softmax(logits, dim=-1)
  log_q_BTK = log_q_BTV.gather(-1, ids_BTK)
  # Tail as a logsumexp over the tokens outside the top-k (not log(1 - sum)): same reason as losses.py.
  log_tail_q_BT = log_q_BTV.scatter(-1, ids_BTK, float("-inf")).logsumexp(-1)
  floor = math.log(1e-10)  # losses.TAIL_FLOOR
  log_q_BTN = torch.cat([log_q_BTK, log_tail_q_BT.clamp_min(floor)[..., None]], -1)
  log_p_BTN = torch.cat([t_logp_BTK, torch.log(t_tail_BT.clamp_min(1e-10))[..., None]], -1)
  p_BTN = log_p_BTN.exp()
  kl_BT = (p_BTN * torch.where(p_BTN > 0, log_p_BTN - log_q_BTN, 0.0)).sum(-1)
  return (kl_BT * mask_BT).sum() / mask_BT.sum()
