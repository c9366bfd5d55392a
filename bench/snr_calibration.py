"""Calibration of the SNR diagnostic's bootstrap interval (analysis/snr_stats.py), by simulation.

For each bin size n and planted signal share rho (g_i = mu + noise, ||mu||^2 / tr(Sigma) = rho),
isotropic or 1/k-spectrum noise in X dimensions: how often the signal-share interval covers rho,
and how often its lower end clears 0 (for rho = 0: the false-positive rate, nominal
(1 - confidence) / 2). Compares the interval snr_stats uses (percentiles shifted by estimate -
bootstrap median) with the log-scale rescale (percentiles x estimate / median) it replaced.

  .venv/bin/python bench/snr_calibration.py --draws=200 --resamples=300
"""

from __future__ import annotations

from absl import app, flags

import numpy as np

from paced_jax.analysis import snr_stats

DRAWS = flags.DEFINE_integer("draws", 200, "Simulated bins per cell.")
RESAMPLES = flags.DEFINE_integer("resamples", 300, "Bootstrap resamples per bin.")
CONFIDENCE = flags.DEFINE_float("confidence", 0.9, "Interval coverage of one bin.")
DIM = flags.DEFINE_integer("dim", 256, "Gradient dimensions X.")
SIZES = flags.DEFINE_list("sizes", ["5", "40", "300"], "Bin sizes n.")
RHOS = flags.DEFINE_list("rhos", ["0", "0.05"], "Planted signal shares.")


def _rescaled(g_PX, resamples, confidence, rng):
  """The replaced interval: bootstrap percentiles times estimate / bootstrap median."""
  n = len(g_PX)
  theta = snr_stats.snr_statistic(g_PX)
  counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
  means = counts @ g_PX / n
  noises = counts @ np.sum(g_PX ** 2, axis=1) / n - np.sum(means ** 2, axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):  # a resample of one repeated problem: inf
    snrs = np.sum(means ** 2, axis=1) / noises
  alpha = (1 - confidence) / 2
  lo, med, hi = np.quantile(snrs, [alpha, 0.5, 1 - alpha])
  return theta * lo / med, theta * hi / med


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  X = DIM.value
  print(f"X = {X}, {DRAWS.value} draws per cell, {RESAMPLES.value} resamples, confidence {CONFIDENCE.value}")
  print("| noise | n | rho | interval | covers rho | lower end > 0 | median width |")
  print("|---|---|---|---|---|---|---|")
  for spectrum in ("isotropic", "1/k"):
    lam_X = np.arange(1, X + 1) ** -1.0 if spectrum == "1/k" else np.ones(X)
    lam_X *= X / lam_X.sum()
    for n in map(int, SIZES.value):
      for rho in map(float, RHOS.value):
        stats = {"shift": [], "rescale": []}
        for _ in range(DRAWS.value):
          mu_X = rng.normal(size=X)
          mu_X *= np.sqrt(rho * X / (mu_X @ mu_X))
          g_PX = mu_X + rng.normal(size=(n, X)) * np.sqrt(lam_X)
          for name, interval in (("shift", snr_stats.bootstrap_snr(g_PX, resamples=RESAMPLES.value,
                                                                   confidence=CONFIDENCE.value, rng=rng)),
                                 ("rescale", _rescaled(g_PX, RESAMPLES.value, CONFIDENCE.value, rng))):
            lo, hi = (snr_stats.signal_share(v, n, X) for v in interval)
            stats[name].append((lo <= rho <= hi, lo > 0, hi - lo))
        for name, rows in stats.items():
          cover, above, width = np.array(rows, np.float64).T
          print(f"| {spectrum} | {n} | {rho:g} | {name} | {cover.mean():.3f} | {above.mean():.3f} | "
                f"{np.median(width):.3g} |")


if __name__ == "__main__":
  app.run(main)
