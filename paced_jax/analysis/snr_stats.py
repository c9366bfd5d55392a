"""Gradient-SNR statistics (METHOD.md section 5): the diagnostic's settings, per-bin SNR with a
bootstrap interval, and the csv / plot of the result. Pure numpy on an [N, D] matrix of
(projected) per-problem gradients; snr.py computes the matrix.

Estimator conventions (tested): SNR = ||g_mean||^2 / mean_i ||g_i - g_mean||^2 over a bin's n
problems. For pure noise, g_i iid N(0, s^2 I_D), numerator and denominator are independent
scaled chi^2 with D and D (n - 1) degrees of freedom, so SNR ~ F(D, D(n-1)) / (n - 1) and
E[SNR] = D / (D (n - 1) - 2) ~ 1 / (n - 1): the noise floor of a bin of n problems (csv column
`noise_floor`). Identical non-zero gradients: inf. A bin of all-zero gradients, or of fewer
than 2 problems: nan (nothing to measure).

Axis legend: N problems, D dimensions, B bootstrap resamples, G pass-rate bins (K + 1).
"""

from __future__ import annotations

import csv
import dataclasses
import warnings

import numpy as np

from paced_jax import artifacts
from paced_jax.config import SNRConfig


@dataclasses.dataclass(frozen=True)
class BinnedSNR:
  correct_G: np.ndarray   # int: c = 0..K
  p_G: np.ndarray
  n_G: np.ndarray         # problems in the bin
  snr_G: np.ndarray
  lo_G: np.ndarray        # bootstrap interval
  hi_G: np.ndarray
  floor_G: np.ndarray     # E[SNR] of pure noise with this n and D


def _ratio(signal, noise):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(noise > 0, signal / np.where(noise > 0, noise, 1.0),
                    np.where(signal > 0, np.inf, np.nan))


def snr_statistic(grads_nD) -> float:
  """||mean||^2 / mean_i ||g_i - mean||^2 of one bin; inf for identical rows, nan for zeros or n < 2."""
  g_nD = np.asarray(grads_nD, np.float64)
  if g_nD.shape[0] < 2:
    return float("nan")
  # Shifted by the first row: identical rows give exactly zero spread, not rounding residue.
  c_nD = g_nD - g_nD[0]
  m_D = c_nD.mean(0)
  noise = np.mean(np.sum((c_nD - m_D) ** 2, axis=1))
  return float(_ratio(np.sum((g_nD[0] + m_D) ** 2), noise))


def noise_floor(n: int, D: int) -> float:
  """E[SNR] for n problems of pure isotropic noise in D dimensions: D / (D (n - 1) - 2)."""
  dof = D * (n - 1)
  return D / (dof - 2) if n >= 2 and dof > 2 else float("nan")


def bootstrap_snr(grads_nD, *, resamples: int = 1000, confidence: float = 0.9,
                  rng: np.random.Generator | None = None) -> tuple[float, float]:
  """Interval of the bin's SNR from resampling its problems with replacement.

  Resampling duplicates problems, which shrinks the spread, so resampled SNRs sit above the
  estimate (about 2 / (n - 1) against 1 / (n - 1) for pure noise) and a plain percentile
  interval can miss it. The percentiles are therefore rescaled by estimate / bootstrap median
  (a median-bias correction on the log scale; SNR is a ratio of positive quantities), which
  keeps the spread of the resampled SNRs and always contains the estimate. In simulation it
  covers E[SNR] (which exceeds ||mu||^2 / tr(Sigma) by about the noise floor) in 92-98% of
  draws at confidence 0.9.
  """
  g_nD = np.asarray(grads_nD, np.float64)
  n = g_nD.shape[0]
  theta = snr_statistic(g_nD)
  if n < 2 or not np.isfinite(theta):
    return theta, theta  # nan: nothing to resample; inf: every resample is identical rows too
  rng = rng or np.random.default_rng(0)
  counts_BN = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
  c_nD = g_nD - g_nD[0]
  m_BD = counts_BN @ c_nD / n
  noise_B = np.maximum(counts_BN @ np.sum(c_nD ** 2, axis=1) / n - np.sum(m_BD ** 2, axis=1), 0.0)
  noise_B[(counts_BN > 0).sum(1) == 1] = 0.0  # one problem drawn n times: no spread at all
  snr_B = _ratio(np.sum((g_nD[0] + m_BD) ** 2, axis=1), noise_B)
  alpha = (1.0 - confidence) / 2
  with warnings.catch_warnings():  # all-nan resamples (zero gradients) just give nan
    warnings.simplefilter("ignore", RuntimeWarning)
    q_lo, med, q_hi = np.nanquantile(snr_B, [alpha, 0.5, 1.0 - alpha], method="inverted_cdf")
  if theta > 0 and 0 < med < np.inf:
    return float(theta * q_lo / med), float(theta * q_hi / med)
  return float(min(q_lo, theta)), float(max(q_hi, theta))  # no usable median: the raw percentiles


def binned_snr(grads_ND, correct_N, K: int, *, resamples: int = 1000, confidence: float = 0.9,
               seed: int = 0) -> BinnedSNR:
  """SNR and bootstrap interval of each pass-rate bin c = 0..K of an [N, D] gradient matrix."""
  g_ND = np.asarray(grads_ND, np.float64)
  correct_N = np.asarray(correct_N, np.int64)
  rng = np.random.default_rng(seed)
  rows = []
  for c in range(K + 1):
    g_nD = g_ND[correct_N == c]
    lo, hi = bootstrap_snr(g_nD, resamples=resamples, confidence=confidence, rng=rng)
    rows.append((len(g_nD), snr_statistic(g_nD), lo, hi, noise_floor(len(g_nD), g_ND.shape[1])))
  n, snr, lo, hi, floor = map(np.asarray, zip(*rows))
  c = np.arange(K + 1)
  return BinnedSNR(c, c / K, n.astype(np.int64), snr, lo, hi, floor)


def select_problems(correct_P, K: int, num: int, *, seed: int = 0, stratified: bool = True) -> np.ndarray:
  """Sorted indices of `num` problems: a seeded draw, round-robin over bins when stratified."""
  correct_P = np.asarray(correct_P)
  order = np.random.default_rng(seed).permutation(len(correct_P))
  if not stratified:
    return np.sort(order[:num])
  # Equal n per bin where the data allow: SNRs of bins with different n have different noise floors.
  by_bin = [order[correct_P[order] == c] for c in range(K + 1)]
  picked = [b[i] for i in range(max(map(len, by_bin), default=0)) for b in by_bin if i < len(b)]
  return np.sort(np.asarray(picked[:num], np.int64))

CSV_FIELDS = ("p", "correct", "n", "snr", "lo", "hi", "w", "noise_floor", "mean_loss", "mean_grad_norm")


def _normalised(x_G) -> np.ndarray:
  x_G = np.asarray(x_G, np.float64)
  finite = x_G[np.isfinite(x_G)]
  top = finite.max() if finite.size and finite.max() > 0 else 1.0
  return x_G / top


def write_csv(path: str, table: BinnedSNR, w_G, loss_N=None, norm_N=None, correct_N=None) -> None:
  """One row per bin: CSV_FIELDS; w is normalised to its maximum, empty cells where undefined."""
  mean = lambda v, c: float(np.mean(v[correct_N == c])) if v is not None and np.any(correct_N == c) else ""
  with artifacts.atomic_open(path) as f:
    out = csv.writer(f)
    out.writerow(CSV_FIELDS)
    for g, c in enumerate(table.correct_G):
      num = lambda x: "" if np.isnan(x) else f"{x:.6g}"
      out.writerow([f"{table.p_G[g]:.6g}", int(c), int(table.n_G[g]), num(table.snr_G[g]), num(table.lo_G[g]),
                    num(table.hi_G[g]), f"{_normalised(w_G)[g]:.6g}", num(table.floor_G[g]),
                    mean(loss_N, c), mean(norm_N, c)])


def read_csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def plot(path: str, table: BinnedSNR, w_G, *, title: str = "gradient SNR") -> None:
  """SNR against p with its interval, and w(p), each normalised to its maximum (finite SNR only)."""
  from matplotlib.figure import Figure  # deferred: plotting is the last step
  fig = Figure(figsize=(6, 4))
  ax = fig.add_subplot()
  ok = np.isfinite(table.snr_G)
  finite = table.snr_G[ok]
  top = finite.max() if finite.size and finite.max() > 0 else 1.0
  ceiling = 1.5
  y, lo, hi = table.snr_G / top, table.lo_G / top, np.minimum(table.hi_G / top, ceiling)
  ax.errorbar(table.p_G[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="o-", capsize=4,
              label="SNR (bootstrap interval)")
  ax.plot(table.p_G[ok], table.floor_G[ok] / top, ":", color="grey", label="noise floor (pure noise)")
  inf = np.isinf(table.snr_G)
  if inf.any():
    ax.plot(table.p_G[inf], np.full(inf.sum(), ceiling), "^", color="C0", label="SNR = inf")
  ax.plot(table.p_G, _normalised(w_G), "s--", color="C1", label="w(p)")
  for p, n in zip(table.p_G, table.n_G):
    ax.annotate(f"n={n}", (p, 0), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7)
  ax.set_xlabel("pass rate p")
  ax.set_ylabel("normalised to max")
  ax.set_ylim(-0.12, max(np.nanmax(np.append(hi[ok], 1.0)), ceiling if inf.any() else 0.0) + 0.1)
  ax.set_title(title if finite.size else f"{title}: no finite SNR")
  ax.legend(fontsize=8)
  fig.tight_layout()
  with artifacts.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
