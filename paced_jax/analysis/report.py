"""Run report: WORKDIR/report/report.md + PNG plots from what the stages wrote (DESIGN.md section 1).

Sections: configuration, pass rates, weights w(p), training curves, evaluation table (rows = runs
or checkpoints, columns = benchmarks, cells mean +- SE in %, as in the paper's tables),
forgetting, gradient SNR. A section whose inputs are missing says so in one line. Other runs'
workdirs (`compare`) add rows to the evaluation and forgetting tables and curves to one loss plot.
Images live next to report.md; every file is written atomically, and images a previous build
made that this one did not are removed, so the directory matches the markdown.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from paced_jax import artifacts, workspace
from paced_jax.analysis import snr_stats
from paced_jax.analysis.runs import BASE_TAG, FINAL_TAG, MISSING, Run, _get, _read_json, load_run
from paced_jax.training import weights as weights_lib

def _pct(x) -> str:
  return MISSING if x is None else f"{100 * x:.1f}"


def format_cell(summary: dict | None, show_k: bool = False) -> str:
  """'mean ± SE' in % (one decimal); the mean alone if SE is undefined; '–' if absent."""
  if not summary or summary.get("accuracy") is None:
    return MISSING
  cell = _pct(summary["accuracy"]) + ("" if summary.get("se") is None else f" ± {_pct(summary['se'])}")
  return cell + (f" (k={summary.get('k')})" if show_k else "")


def eval_table(rows: Sequence[tuple[str, dict[str, dict]]]) -> list[str]:
  """Markdown table: one row per (label, benchmark -> summary), one column per benchmark."""
  names = list(dict.fromkeys(b for _, benches in rows for b in benches))
  if not names:
    return ["No benchmark results in these runs."]
  ks = {b: {s.get("k") for _, benches in rows for n, s in benches.items() if n == b} for b in names}
  header = [f"{b} (mean@{next(iter(ks[b]))})" if len(ks[b]) == 1 else b for b in names]
  lines = ["| run | " + " | ".join(header) + " |", "|---" * (len(names) + 1) + "|"]
  for label, benches in rows:
    lines.append(f"| {label} | " + " | ".join(format_cell(benches.get(b), len(ks[b]) > 1) for b in names) + " |")
  return lines


def _result_tag(run: Run) -> str | None:
  """The tag that stands for a run's result: final, else its last tag (tags are in report order)."""
  return FINAL_TAG if FINAL_TAG in run.evals else (list(run.evals)[-1] if run.evals else None)


class _Writer:
  def __init__(self, out_dir: str):
    self.out, self.lines, self.images = out_dir, [], []

  def add(self, *lines: str) -> None:
    for line in lines:
      if line or (self.lines and self.lines[-1]):  # one blank line between blocks, never two
        self.lines.append(line)

  def section(self, title: str) -> None:
    self.add("", f"## {title}", "")

  def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    self.add("| " + " | ".join(header) + " |", "|---" * len(header) + "|",
             *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), "")

  def figure(self, name: str, fig: Figure, alt: str) -> None:
    fig.tight_layout(rect=(0, 0.07, 1, 1) if fig.legends else None)  # a figure legend keeps its strip below the axes
    with artifacts.atomic_open(os.path.join(self.out, name), "wb") as f:
      fig.savefig(f, format="png", dpi=100)
    self.images.append(name)
    self.add("", f"![{alt}]({name})", "")

  def copy_image(self, name: str, source: str, alt: str) -> None:
    with open(source, "rb") as f:
      artifacts.write_bytes(os.path.join(self.out, name), f.read())
    self.images.append(name)
    self.add("", f"![{alt}]({name})", "")


def _config_section(w: _Writer, run: Run) -> None:
  w.section("Configuration")
  if run.config is None:
    w.add("config.json: missing (the pipeline writes WORKDIR/config.json).")
    return
  c = run.config
  fields = ["student", "teacher", "track", "problems.source", "problems.n_train", "pass_rate.sampling.num_samples",
            "weights.scheme", "weights.alpha", "weights.beta", "weights.norm", "weights.keep_zero_weight",
            "weights.posterior_mean", "train.loss", "train.steps", "train.batch_size", "train.lr", "train.schedule",
            "train.seq_len", "eval.benchmarks", "eval.sampling.num_samples", "eval.retain_set"]
  show = lambda v: "(empty)" if v == "" else f"`{v}`"
  w.table(["field", "value"], [(f, show(_get(c, f))) for f in fields])
  w.add("", "<details><summary>full configuration</summary>", "", "```json", json.dumps(c, indent=2), "```",
        "", "</details>")


def _pass_rate_section(w: _Writer, run: Run) -> list[int] | None:
  w.section("Pass rates")
  rounds = sorted(glob.glob(os.path.join(workspace.pass_rates_root(run.workdir), "*", artifacts.MANIFEST)))
  manifest = _read_json(rounds[0]) if rounds else None
  hist = manifest.get("histogram") if isinstance(manifest, dict) else None
  if not hist:
    w.add("pass_rates/0000: missing (run the pass_rate stage).")
    return None
  K = len(hist) - 1
  total = max(sum(hist), 1)
  w.add(f"Round 0: {sum(hist)} problems, K = {K} rollouts each, mean p = {manifest.get('mean_p', float('nan')):.3f}.")
  fig = Figure(figsize=(6, 3.2))
  ax = fig.add_subplot()
  ax.bar(np.arange(K + 1) / K, hist, width=0.8 / K, color="C0")
  ax.set(xlabel="pass rate p = correct / K", ylabel="problems", title="initial student pass rates")
  w.figure("pass_rates.png", fig, "pass-rate histogram")
  w.table(["p", "correct", "problems", "share"], [(f"{c / K:.3f}", c, n, f"{100 * n / total:.1f}%")
                                                  for c, n in enumerate(hist)])
  for path in rounds[1:]:
    m = _read_json(path) or {}
    w.add("", f"Round {int(os.path.basename(os.path.dirname(path)))} (recomputed): histogram {m.get('histogram')}, "
          f"mean p = {m.get('mean_p', float('nan')):.3f}.")
  return hist


def _weight_config(run: Run) -> tuple[weights_lib.WeightConfig, str]:
  given = _get(run.config, "weights", None)
  if not isinstance(given, dict):
    return weights_lib.WeightConfig(), " (config missing: default weight settings)"
  known = {f.name for f in dataclasses.fields(weights_lib.WeightConfig)}
  return weights_lib.WeightConfig(**{k: v for k, v in given.items() if k in known}), ""


def _weights_section(w: _Writer, run: Run, hist: list[int] | None) -> None:
  w.section("Weights w(p)")
  if hist is None:
    w.add("Needs the pass-rate histogram: missing.")
    return
  wc, note = _weight_config(run)
  K = len(hist) - 1
  counts = np.asarray(hist, np.float64)
  raw = weights_lib.raw_weights(np.arange(K + 1), K, wc)
  keep = np.ones(K + 1, bool) if wc.keep_zero_weight else raw > 0
  kept, dropped = int(counts[keep].sum()), int(counts[~keep].sum())
  mean = (counts * raw)[keep].sum() / max(kept, 1)
  normed = raw / mean if wc.norm == "dataset_mean" and mean > 0 else raw
  w_kept = np.repeat(normed[keep], counts[keep].astype(int))
  ess = w_kept.sum() ** 2 / max((w_kept ** 2).sum(), 1e-30)
  w.add(f"Scheme `{wc.scheme}` (alpha {wc.alpha}, beta {wc.beta}, norm `{wc.norm}`, posterior mean "
        f"{wc.posterior_mean}){note}: {kept} of {kept + dropped} problems kept, {dropped} dropped (w = 0); "
        f"dataset ESS {ess:.1f} of {kept}.")
  fig = Figure(figsize=(6, 3.2))
  ax = fig.add_subplot()
  bars = ax.twinx()
  p = np.arange(K + 1) / K
  bars.bar(p[keep], counts[keep], width=0.6 / K, color="C2", alpha=0.3, label="kept")
  bars.bar(p[~keep], counts[~keep], width=0.6 / K, color="grey", alpha=0.3, label="dropped")
  bars.set_ylabel("problems")
  ax.plot(p, normed, "o-", color="C1", label=f"w(p) ({wc.norm})")
  ax.set(xlabel="pass rate p", ylabel="weight", title="problem weight and pass-rate counts")
  ax.set_zorder(bars.get_zorder() + 1)
  ax.patch.set_visible(False)
  handles = ax.get_legend_handles_labels()[0] + bars.get_legend_handles_labels()[0]
  fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
  w.figure("weights.png", fig, "weight curve")
  w.table(["p", "problems", "w raw", f"w ({wc.norm})", "kept"],
          [(f"{p[c]:.3f}", int(counts[c]), f"{raw[c]:.4f}", f"{normed[c]:.4f}", "yes" if keep[c] else "no")
           for c in range(K + 1)])


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
  return (np.asarray([s for s, _ in pts]), np.asarray([v for _, v in pts], np.float64)) if pts else (np.zeros(0),) * 2


def _training_section(w: _Writer, run: Run, compare: Sequence[Run]) -> None:
  w.section("Training")
  m = run.metrics
  if not m:
    w.add("metrics/train.jsonl: missing (run the train stage).")
    return
  switches = [r["step"] - 0.5 for prev, r in zip(m, m[1:]) if r.get("stage") != prev.get("stage")]
  fig = Figure(figsize=(9, 6))
  for i, (key, label) in enumerate([("loss", "weighted loss"), ("fkl", "forward KL / token"),
                                    ("rkl", "reverse KL / token"), ("ess", "ESS of batch weights")]):
    ax = fig.add_subplot(2, 2, i + 1)
    ax.plot(*_series(m, key), ".-")
    for x in switches:
      ax.axvline(x, color="grey", ls="--", lw=0.8)
      ax.annotate("stage switch", (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                  textcoords="offset points", fontsize=7, color="grey")
    ax.set(xlabel="step", title=label)
  w.figure("training.png", fig, "training curves")
  G = max(len(r.get("bucket_count") or []) for r in m)
  if G:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for b in range(G):
      pts = [(r["step"], r["bucket_loss"][b]) for r in m
             if len(r.get("bucket_count") or []) == G and r["bucket_count"][b]]
      if pts:
        ax.plot(*zip(*pts), ".-", label=f"p = {b}/{G - 1}")
    ax.set(xlabel="step", ylabel="mean sequence loss", title="loss per pass-rate bucket")
    ax.legend(fontsize=7, ncol=2)
    w.figure("bucket_loss.png", fig, "loss per pass-rate bucket")
  total = lambda key: sum(r.get(key) or 0 for r in m)
  num = lambda v: f"{v:.4g}" if isinstance(v, (int, float)) else MISSING
  tps = [r["tokens_per_s"] for r in m if r.get("tokens_per_s")]
  w.table(["steps", "first loss", "last loss", "skipped", "dropped sequences", "tokens", "median tokens/s", "seconds"],
          [(m[-1]["step"], num(m[0].get("loss")), num(m[-1].get("loss")), int(total("skipped")),
            int(total("dropped_sequences")), int(total("tokens")), f"{np.median(tps):.0f}" if tps else MISSING,
            f"{total('seconds'):.0f}")])
  others = [r for r in compare if r.metrics]
  if others:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for r in [run, *others]:
      ax.plot(*_series(r.metrics, "loss"), label=r.name)
    ax.set(xlabel="step", ylabel="weighted loss", title="training loss by run")
    ax.legend(fontsize=8)
    w.figure("training_compare.png", fig, "training loss by run")


def _eval_section(w: _Writer, run: Run, compare: Sequence[Run]) -> None:
  w.section("Evaluation")
  if not run.evals and not any(r.evals for r in compare):
    w.add(f"eval/: missing{' in every run' if compare else ''} (run the evaluate stage).")
    return
  if run.evals:
    w.add("Accuracy mean@k in % ± standard error over problems, by checkpoint tag:", "")
    w.add(*eval_table(list(run.evals.items())), "")
    _accuracy_figure(w, run)
    _sample_responses(w, run)
  if compare:
    rows = [(f"base ({BASE_TAG})", run.evals[BASE_TAG])] if BASE_TAG in run.evals else []
    for r in [run, *compare]:
      tag = _result_tag(r)
      rows.append((f"{r.name} ({tag or 'no evaluation'})", r.evals.get(tag, {})))
    w.add("", "Runs compared (each run's final evaluation, else its latest):", "")
    w.add(*eval_table(rows), "")


def _accuracy_figure(w: _Writer, run: Run) -> None:
  """Accuracy per benchmark before and after training, with standard-error bars."""
  tags = [t for t in (BASE_TAG, _result_tag(run)) if t in run.evals]
  benches = sorted({b for t in tags for b in run.evals[t]})
  if not benches or len(set(tags)) < 2:
    return
  fig = Figure(figsize=(max(4, 1.6 * len(benches) + 2), 3.2))
  ax = fig.add_subplot()
  x = np.arange(len(benches))
  for i, tag in enumerate(tags):
    got = [run.evals[tag].get(b, {}) for b in benches]
    acc = [100 * (s.get("accuracy") or 0) for s in got]
    se = [100 * (s.get("se") or 0) for s in got]
    ax.bar(x + (i - 0.5) * 0.38, acc, 0.38, yerr=se, capsize=3, label=tag)
  ax.set_xticks(x, benches)
  ax.set(ylabel="accuracy mean@k (%)", title="before and after training (± SE)")
  ax.legend(fontsize=8)
  w.figure("accuracy.png", fig, "accuracy before and after training")


def _sample_responses(w: _Writer, run: Run, per_kind: int = 2, chars: int = 400) -> None:
  """A few correct and wrong responses of the final evaluation, as the verifier saw them."""
  tag = _result_tag(run)
  paths = sorted(glob.glob(os.path.join(workspace.eval_dir(run.workdir, tag or ""), "*.responses.jsonl")))
  if not tag or not paths:
    return
  picked = {True: [], False: []}
  with open(paths[0], encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      for text, ok, extracted in zip(r.get("responses", []), r.get("verdicts", []), r.get("extracted", [])):
        if len(picked[bool(ok)]) < per_kind:
          picked[bool(ok)].append((r["id"], r.get("truth"), extracted, text))
  w.add("", f"Sample responses ({os.path.basename(paths[0]).split('.')[0]}, tag {tag}):", "")
  for ok in (True, False):
    for pid, truth, extracted, text in picked[ok]:
      shown = text if len(text) <= chars else text[:chars] + " [...]"
      w.add(f"- {'correct' if ok else 'wrong'}: `{pid}`, truth `{truth}`, extracted `{extracted}`", "",
            "  ```", *("  " + line for line in shown.splitlines() or [""]), "  ```")


def _forgetting_section(w: _Writer, runs: Sequence[Run]) -> None:
  w.section("Forgetting (retain set)")
  rows = []
  for r in runs:
    later = [t for t in r.retain if t != BASE_TAG]
    after_tag = FINAL_TAG if FINAL_TAG in r.retain else (later[-1] if later else None)
    if BASE_TAG not in r.retain or after_tag is None:
      continue
    before, after = r.retain[BASE_TAG]["accuracy"], r.retain[after_tag]["accuracy"]
    rel = (before - after) / before if before > 0 else None
    change = 100 * (after - before)
    rows.append((r.name, _pct(before), f"{_pct(after)} ({after_tag})", f"{change:+.1f}",
                 MISSING if rel is None else f"{100 * rel:.1f}%"))
  if not rows:
    w.add(f"retain.json before ({BASE_TAG}) and after training: missing (set config.eval.retain_set).")
    return
  w.add("Change is after - before in points (negative: forgotten); relative drop is (before - after) / before.", "")
  w.table(["run", "before (%)", "after (%)", "change (points)", "relative drop"], rows)


def _snr_section(w: _Writer, run: Run) -> None:
  w.section("Gradient SNR")
  csvs = glob.glob(os.path.join(workspace.snr_root(run.workdir), "*", "snr.csv"))
  tags = sorted(os.path.basename(os.path.dirname(p)) for p in csvs)
  if not tags:
    w.add("snr/: missing (run `python -m paced_jax.tools.snr`).")
    return
  for tag in tags:
    directory = workspace.snr_dir(run.workdir, tag)
    manifest = _read_json(os.path.join(directory, artifacts.MANIFEST)) or {}
    what = (f"Divergence `{manifest['divergence']}` on `{manifest['source']}` sequences, gradients "
            f"{'count-sketched' if manifest.get('projection') == 'count_sketch' else 'kept'} to D = {manifest['dim']}"
            if all(k in manifest for k in ("divergence", "source", "dim")) else "Settings unknown (no manifest)")
    with open(os.path.join(directory, "snr.csv"), newline="") as f:
      rows = list(csv.DictReader(f))
    confidence = (manifest.get("settings") or {}).get("confidence")
    w.add(f"### {tag}", "", f"{what}. The noise floor is the SNR that n problems of pure noise give (it "
          "differs with n, so raw SNRs of bins of different sizes are not comparable); rho_hat is the signal "
          "share above it, with a bootstrap interval simultaneous over the bins.", "",
          f"**{snr_stats.summary(rows, confidence)}**", "")
    if os.path.exists(os.path.join(directory, "snr.png")):
      w.copy_image(f"snr_{tag}.png", os.path.join(directory, "snr.png"), f"gradient SNR ({tag})")
    num = lambda x: f"{float(x):.3g}" if x else MISSING
    interval = lambda lo, hi: f"[{num(lo)}, {num(hi)}]" if lo else MISSING
    w.table(["p", "n", "SNR", "noise floor", "rho_hat", "interval", "above floor", "w (norm.)"],
            [(num(r["p"]), r["n"], num(r["snr"]), num(r["noise_floor"]), num(r.get("rho")),
              interval(r.get("rho_lo"), r.get("rho_hi")), "yes" if r.get("above_floor") == "1" else "no", num(r["w"]))
             for r in rows])


def build_report(workdir: str, *, compare: Sequence[str] = ()) -> str:
  """Write WORKDIR/report/report.md and its plots; returns the markdown's path."""
  out = workspace.report_dir(workdir)
  os.makedirs(out, exist_ok=True)
  run = load_run(workdir)
  others = [load_run(d) for d in compare]
  seen: dict[str, int] = {}
  for r in [run, *others]:  # identical method names would make rows ambiguous
    seen[r.name] = seen.get(r.name, 0) + 1
  for r in [run, *others]:
    if seen[r.name] > 1:
      r.name = f"{r.name} ({os.path.basename(os.path.normpath(r.workdir))})"
  w = _Writer(out)
  w.add(f"# PACED run report: {run.name}", "", f"Workdir `{os.path.abspath(workdir)}`"
        + (f"; compared with {', '.join(f'`{r.workdir}`' for r in others)}." if others else "."))
  if run.metrics:  # skipped updates belong in the summary: a run that skipped many did not train as configured
    skipped = int(sum(r.get("skipped") or 0 for r in run.metrics))
    w.add("", f"{'**Warning:** ' if skipped else ''}{skipped} of {len(run.metrics)} training updates skipped "
          "(non-finite loss or gradients, or no weight in the batch).")
  _config_section(w, run)
  hist = _pass_rate_section(w, run)
  _weights_section(w, run, hist)
  _training_section(w, run, others)
  _eval_section(w, run, others)
  _forgetting_section(w, [run, *others])
  _snr_section(w, run)
  path = os.path.join(out, "report.md")
  with artifacts.atomic_open(path) as f:
    f.write("\n".join(w.lines) + "\n")
  for stale in set(map(os.path.basename, glob.glob(os.path.join(out, "*.png")))) - set(w.images):
    os.unlink(os.path.join(out, stale))
  return path
