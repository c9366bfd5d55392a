"""Gradient-SNR statistics (METHOD.md section 5): per-bin SNR, its noise floor, the signal share
above that floor with a bootstrap interval, and the csv / plot / summary of the result. Pure numpy
on a [P, X] matrix of (projected) per-problem gradients; snr.py computes the matrix.

Estimator conventions (tested): SNR = ||g_mean||^2 / mean_i ||g_i - g_mean||^2 over a bin's n
problems. For g_i = mu + e_i with e_i iid N(0, s^2 I_X), numerator and denominator are independent
and E[SNR] = floor + rho n floor, where floor = X / (X (n - 1) - 2) ~ 1 / (n - 1) is the SNR of
pure noise (`noise_floor`) and rho = ||mu||^2 / tr(Sigma) the signal share. So
  rho_hat = (SNR - floor) / (n floor)
estimates rho without bias whatever n is: SNR - floor, rescaled by n floor ~ n / (n - 1). Bins of
different n have different floors, which is why a curve of raw SNRs can draw a bell from noise.
Anisotropic noise (effective dimension d = tr(Sigma)^2 / tr(Sigma^2) < X) raises the true floor by
a factor ~ 1 + 2 / ((n - 1) d) over this one; the bootstrap interval, not the floor, absorbs it.
Identical non-zero gradients: inf. A bin of all-zero gradients, or of fewer than 2 problems: nan.

Intervals are simultaneous over the non-empty bins (Bonferroni): each bin's interval has coverage
1 - (1 - confidence) / bins, so "some bin sits above its floor" is claimed wrongly with
probability <= 1 - confidence when every bin is noise (as far as the bootstrap is calibrated;
simulated rates sat below nominal, see bootstrap_snr). Each end is a bootstrap quantile at
(1 - confidence) / (2 bins): 1000 resamples leave ~5 draws beyond it for 9 bins at 0.9.

Shape suffixes (the legend in paced_jax/__init__.py): P problems, X gradient dimensions, A pass-rate buckets
(correct counts 0..K); `counts`, `means`, `noises`, `snrs` hold one row per bootstrap resample.
"""

from __future__ import annotations

import csv
import dataclasses
import warnings

import numpy as np

from paced_jax import artifacts


@dataclasses.dataclass(frozen=True)
class BinnedSNR:
  correct_A: np.ndarray   # int: c = 0..K
  p_A: np.ndarray
  n_A: np.ndarray         # problems in the bin
  snr_A: np.ndarray
  lo_A: np.ndarray        # bootstrap interval of the SNR (simultaneous over bins)
  hi_A: np.ndarray
  floor_A: np.ndarray     # E[SNR] of pure noise with this n and X
  rho_A: np.ndarray       # signal share above the floor, (snr - floor) / (n floor)
  rho_lo_A: np.ndarray    # the SNR interval mapped the same way
  rho_hi_A: np.ndarray
  confidence: float       # simultaneous coverage of the intervals

  @property
  def above_floor_A(self) -> np.ndarray:
    """Bins of at least MIN_JUDGED problems whose signal-share interval lies above 0 (nan bins never do)."""
    return (np.nan_to_num(self.rho_lo_A, nan=-np.inf) > 0) & (self.n_A >= MIN_JUDGED)


# The smallest bin judged against its floor. With 2-4 problems the bootstrap's resamples repeat one
# problem often enough that the interval is degenerate (the lab's 2-problem bin got [0.25, inf]);
# bench/snr_calibration.py checked the intervals from n = 5 up.
MIN_JUDGED = 5


def _ratio(signal, noise):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(noise > 0, signal / np.where(noise > 0, noise, 1.0),
                    np.where(signal > 0, np.inf, np.nan))


def snr_statistic(grads_PX) -> float:
  """||mean||^2 / mean_i ||g_i - mean||^2 of one bin; inf for identical rows, nan for zeros or n < 2."""
  g_PX = np.asarray(grads_PX, np.float64)
  if g_PX.shape[0] < 2:
    return float("nan")
  # Shifted by the first row: identical rows give exactly zero spread, not rounding residue.
  c_PX = g_PX - g_PX[0]
  m_X = c_PX.mean(0)
  noise = np.mean(np.sum((c_PX - m_X) ** 2, axis=1))
  return float(_ratio(np.sum((g_PX[0] + m_X) ** 2), noise))


def noise_floor(n: int, X: int) -> float:
  """E[SNR] for n problems of pure isotropic noise in X dimensions: X / (X (n - 1) - 2)."""
  dof = X * (n - 1)
  return X / (dof - 2) if n >= 2 and dof > 2 else float("nan")


def signal_share(snr, n, X):
  """rho_hat = (SNR - floor) / (n floor): unbiased for ||mu||^2 / tr(Sigma) under isotropic noise."""
  floor = noise_floor(n, X)
  with np.errstate(invalid="ignore"):
    return (np.asarray(snr, np.float64) - floor) / (n * floor)


def bootstrap_snr(grads_PX, *, resamples: int = 1000, confidence: float = 0.9,
                  rng: np.random.Generator | None = None) -> tuple[float, float]:
  """Interval of the bin's SNR from resampling its problems with replacement.

  Resampling duplicates problems, which shrinks the spread, so resampled SNRs sit above the
  estimate (about 2 / (n - 1) against 1 / (n - 1) for pure noise) and a plain percentile
  interval can miss it. The percentiles are therefore shifted by estimate - bootstrap median,
  which keeps the spread of the resampled SNRs and always contains the estimate (the lower end is
  clipped at 0). bench/snr_calibration.py (confidence 0.9, X = 256, n = 5 / 40 / 300, isotropic
  and 1/k-spectrum noise, 200 draws each): pure noise put the interval above the floor in 0-0.5%
  of draws (nominal 5%), a planted share of 0.05 was covered in 94-100%. Rescaling the
  percentiles by estimate / median instead (a log-scale shift) gave intervals half as wide that
  cleared the floor of pure noise in up to 8% of draws: the bootstrap of a mean's squared norm is
  degenerate at mu = 0, and the additive shift errs on the safe side there.
  """
  g_PX = np.asarray(grads_PX, np.float64)
  n = g_PX.shape[0]
  theta = snr_statistic(g_PX)
  if n < 2 or not np.isfinite(theta):
    return theta, theta  # nan: nothing to resample; inf: every resample is identical rows too
  rng = rng or np.random.default_rng(0)
  counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
  c_PX = g_PX - g_PX[0]
  means = counts @ c_PX / n
  noises = np.maximum(counts @ np.sum(c_PX ** 2, axis=1) / n - np.sum(means ** 2, axis=1), 0.0)
  noises[(counts > 0).sum(1) == 1] = 0.0  # one problem drawn n times: no spread at all
  snrs = _ratio(np.sum((g_PX[0] + means) ** 2, axis=1), noises)
  alpha = (1.0 - confidence) / 2
  with warnings.catch_warnings():  # all-nan resamples (zero gradients) just give nan
    warnings.simplefilter("ignore", RuntimeWarning)
    q_lo, med, q_hi = np.nanquantile(snrs, [alpha, 0.5, 1.0 - alpha], method="inverted_cdf")
  if np.isfinite(med):
    return float(max(theta + q_lo - med, 0.0)), float(theta + q_hi - med)
  return float(min(q_lo, theta)), float(max(q_hi, theta))  # no usable median: the raw percentiles


def binned_snr(grads_PX, correct_P, K: int, *, resamples: int = 1000, confidence: float = 0.9,
               seed: int = 0) -> BinnedSNR:
  """SNR, floor, signal share and simultaneous intervals of each pass-rate bin c = 0..K of [P, X] gradients."""
  g_PX = np.asarray(grads_PX, np.float64)
  correct_P = np.asarray(correct_P, np.int64)
  X = g_PX.shape[1]
  n_A = np.bincount(correct_P, minlength=K + 1)[:K + 1]
  bins = max(int(np.sum(n_A >= 2)), 1)
  per_bin = 1.0 - (1.0 - confidence) / bins
  rng = np.random.default_rng(seed)
  rows = []
  for c in range(K + 1):
    bin_PX = g_PX[correct_P == c]
    lo, hi = bootstrap_snr(bin_PX, resamples=resamples, confidence=per_bin, rng=rng)
    rows.append((snr_statistic(bin_PX), lo, hi, noise_floor(len(bin_PX), X)))
  snr, lo, hi, floor = map(np.asarray, zip(*rows))
  rho, rho_lo, rho_hi = (np.asarray([signal_share(x, n, X) for x, n in zip(v, n_A)]) for v in (snr, lo, hi))
  c = np.arange(K + 1)
  return BinnedSNR(c, c / K, n_A.astype(np.int64), snr, lo, hi, floor, rho, rho_lo, rho_hi, confidence)


def select_problems(correct_P, K: int, num: int = 0, *, seed: int = 0, stratified: bool = True,
                    equal_n: bool = False) -> np.ndarray:
  """Sorted indices of the problems to measure: all of them (num = 0) or a seeded `num`.

  equal_n first cuts every bin to the size of the smallest bin that holds >= 2 problems (bins of
  one problem have no SNR and stay as they are). A cap draws round-robin over bins when
  stratified, else in the seeded random order.
  """
  correct_P = np.asarray(correct_P)
  order = np.random.default_rng(seed).permutation(len(correct_P))
  by_bin = [order[correct_P[order] == c] for c in range(K + 1)]
  if equal_n:
    m = min((len(b) for b in by_bin if len(b) >= 2), default=0)
    by_bin = [b[:m] if len(b) >= 2 else b for b in by_bin]
  if stratified:
    pool = [b[i] for i in range(max(map(len, by_bin), default=0)) for b in by_bin if i < len(b)]
  else:
    kept = set(np.concatenate(by_bin).tolist()) if by_bin else set()
    pool = [i for i in order if i in kept]
  return np.sort(np.asarray(pool[:num] if num else pool, np.int64))


CSV_FIELDS = ("p", "correct", "n", "snr", "lo", "hi", "noise_floor", "rho", "rho_lo", "rho_hi", "above_floor",
              "w", "mean_loss", "mean_grad_norm")


def _normalised(x_A) -> np.ndarray:
  x_A = np.asarray(x_A, np.float64)
  finite = x_A[np.isfinite(x_A)]
  top = finite.max() if finite.size and finite.max() > 0 else 1.0
  return x_A / top


def write_csv(path: str, table: BinnedSNR, w_A, loss_P=None, norm_P=None, correct_P=None) -> None:
  """One row per bin: CSV_FIELDS; w is normalised to its maximum, empty cells where undefined."""
  mean = lambda v, c: float(np.mean(v[correct_P == c])) if v is not None and np.any(correct_P == c) else ""
  num = lambda x: "" if np.isnan(x) else f"{x:.6g}"
  with artifacts.atomic_open(path) as f:
    out = csv.writer(f)
    out.writerow(CSV_FIELDS)
    for g, c in enumerate(table.correct_A):
      out.writerow([f"{table.p_A[g]:.6g}", int(c), int(table.n_A[g]), num(table.snr_A[g]), num(table.lo_A[g]),
                    num(table.hi_A[g]), num(table.floor_A[g]), num(table.rho_A[g]), num(table.rho_lo_A[g]),
                    num(table.rho_hi_A[g]), int(table.above_floor_A[g]), f"{_normalised(w_A)[g]:.6g}",
                    mean(loss_P, c), mean(norm_P, c)])


def read_csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def summary(rows: list[dict], confidence: float | None = None) -> str:
  """One plain sentence from csv rows: which bins sit above their noise floor, or that none does."""
  level = f"{100 * confidence:g}% " if confidence else ""
  if rows and "rho_lo" not in rows[0]:
    return "This snr.csv predates the noise-floor columns: rerun the snr stage before reading it."
  measured = [r for r in rows if r.get("rho_lo")]
  above = [r for r in measured if r.get("above_floor") == "1"]
  if not measured:
    return "No bin holds 2 or more problems: nothing was measured."
  if not above:
    return (f"No bin is distinguishable from its noise floor: every {level}interval of the signal share "
            f"rho_hat = (SNR - floor) / (n floor) includes 0 ({len(measured)} bins measured). Differences "
            "between the raw SNRs of bins are what their sizes alone would give.")
  names = ", ".join(f"p={float(r['p']):.3g} (n={r['n']}, rho_hat={float(r['rho']):.3g})" for r in above)
  return (f"{len(above)} of {len(measured)} bins sit above their noise floor (simultaneous {level}intervals of "
          f"the signal share above 0): {names}.")


def plot(path: str, table: BinnedSNR, w_A, *, title: str = "gradient SNR") -> None:
  """Top: SNR per bin with its interval and the bin's noise floor (log scale). Bottom: the signal
  share rho_hat with its interval against 0, and w(p) (normalised, its own axis)."""
  from matplotlib.figure import Figure  # deferred: plotting is the last step
  fig = Figure(figsize=(6.4, 6.4))
  top, bottom = fig.subplots(2, 1, sharex=True)
  p_A = table.p_A
  ok = np.isfinite(table.snr_A) & (table.snr_A > 0)
  y, lo, hi = table.snr_A, np.maximum(table.lo_A, 1e-12), table.hi_A
  seen = np.concatenate([hi[ok], y[ok], table.floor_A])
  seen = seen[np.isfinite(seen)]
  ceiling = 2 * (seen.max() if seen.size else 1.0)
  err = lambda a: np.maximum(np.nan_to_num(a, nan=0.0), 0.0)  # matplotlib refuses negative or nan bars
  top.errorbar(p_A[ok], y[ok], yerr=[err(y[ok] - lo[ok]), err(np.minimum(hi[ok], ceiling) - y[ok])], fmt="o-",
               capsize=4, label=f"SNR ({100 * table.confidence:g}% simultaneous interval)")
  has_floor = np.isfinite(table.floor_A)
  top.plot(p_A[has_floor], table.floor_A[has_floor], "_--", color="grey", markersize=14, label="noise floor of the bin")
  inf = np.isinf(table.snr_A)
  if inf.any():
    top.plot(p_A[inf], np.full(inf.sum(), ceiling), "^", color="C0", label="SNR = inf")
  top.set_yscale("log")
  top.set_ylabel("SNR")
  top.legend(fontsize=7)
  measured = np.isfinite(table.rho_A)
  r, rlo, rhi = table.rho_A, table.rho_lo_A, table.rho_hi_A
  colors = np.where(table.above_floor_A, "C2", "C0")
  for g in np.flatnonzero(measured):
    bottom.errorbar(p_A[g], r[g], yerr=[err([r[g] - rlo[g]]), err([min(rhi[g], 1e6) - r[g]])], fmt="o",
                    capsize=4, color=colors[g])
  bottom.axhline(0.0, color="grey", ls="--", lw=1, label="no signal (noise floor)")
  finite = np.concatenate([rlo[measured], rhi[measured]])
  finite = finite[np.isfinite(finite)]
  if finite.size:
    span = max(finite.max() - min(finite.min(), 0), 1e-6)
    bottom.set_ylim(min(finite.min(), 0) - 0.1 * span, max(finite.max(), 0) + 0.1 * span)
  bottom.set_ylabel("signal share rho_hat")
  twin = bottom.twinx()
  twin.plot(p_A, _normalised(w_A), "s:", color="C1", alpha=0.6)
  twin.set_ylabel("w(p) / max w", color="C1")
  twin.set_ylim(0, 1.15)
  for p, n in zip(p_A, table.n_A):
    bottom.annotate(f"n={n}", (p, 0), xycoords=("data", "axes fraction"), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=7)
  bottom.set_xlabel("pass rate p")
  bottom.legend(fontsize=7, loc="upper left")
  n_above = int(table.above_floor_A.sum())
  fig.suptitle(f"{title}\n" + (f"{n_above} bin(s) above the noise floor" if n_above
                               else "no bin distinguishable from its noise floor"), fontsize=9)
  fig.tight_layout()
  with artifacts.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
