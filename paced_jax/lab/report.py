"""The method lab's report: WORKDIR/report/lab.md, results.json and plots, from what the runs wrote.

One table per track, in the layout of the paper's tables: a row per method (the initial student
and the teacher first), a column per difficulty level, then all levels together and the
forgetting on the solved set; cells are mean +- standard error over seeds, in %. The base rows
have no seeds: their +- is the standard error over problems. Runs still missing leave their
cells out ('n=' says how many seeds a cell averages). Also: the initial student's pass-rate
histogram per level, the gradient SNR per track, accuracy per level and training-loss plots.
"""

from __future__ import annotations

import csv
import glob
import math
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax.analysis import snr_stats
from paced_jax.evaluation import evaluate
from paced_jax.lab import config as lab_config
from paced_jax.lab import runner as lab_runner
from paced_jax.problems import prepare as prepare_lib

MISSING = "–"


def _read(path: str):
  try:
    return artifacts.read_json(path)
  except artifacts.ArtifactError:
    return None


def level_accuracy(workdir: str, tag: str, levels: dict[str, int]) -> dict[str, float] | None:
  """Held-out mean@k per level (keys '1'..) and over all ('all') of one evaluation, or None."""
  path = os.path.join(workspace.eval_dir(workdir, tag), "heldout.responses.jsonl")
  if not os.path.exists(path):
    return None
  by_level: dict[str, list[float]] = {}
  for r in evaluate.read_responses(path):
    by_level.setdefault(str(levels.get(r["id"], 0)), []).append(r["correct"] / r["k"])
  out = {lv: float(np.mean(v)) for lv, v in sorted(by_level.items(), key=lambda kv: int(kv[0]))}
  out["all"] = float(np.mean([x for v in by_level.values() for x in v]))
  return out


def _solved_accuracy(workdir: str, tag: str) -> float | None:
  s = _read(os.path.join(workspace.eval_dir(workdir, tag), f"{lab_runner.SOLVED}.json"))
  return None if s is None else s.get("accuracy")


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None, int]:
  """(mean, standard error over the values, n); SE is None for fewer than 2 values."""
  x = np.asarray([v for v in values if v is not None], np.float64)
  if not x.size:
    return None, None, 0
  return float(x.mean()), (float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None), int(x.size)


def _cell(stat: tuple[float | None, float | None, int], show_n: bool = False, scale: float = 100.0) -> str:
  mean, se, n = stat
  if mean is None:
    return MISSING
  text = f"{scale * mean:.1f}" + ("" if se is None else f" ± {scale * se:.1f}")
  return text + (f" (n={n})" if show_n else "")


def collect(workdir: str) -> dict:
  """All numbers of the lab: config, per-run per-level accuracies, base rows, timings."""
  lab_json = _read(os.path.join(workdir, "lab.json")) or {}
  shared = workspace.lab_shared_dir(workdir)
  levels = {p.id: p.level for p in prepare_lib.read_problems(shared, "heldout")} if os.path.exists(
      os.path.join(workspace.problems_dir(shared), artifacts.MANIFEST)) else {}
  base = {}
  for tag in (evaluate.BASELINE_TAG, lab_runner.TEACHER_TAG):
    acc = level_accuracy(shared, tag, levels)
    if acc is not None:
      base[tag] = {"levels": acc, "solved": _solved_accuracy(shared, tag), "se": _problem_se(shared, tag, levels)}
  runs = []
  for record_path in sorted(glob.glob(os.path.join(workspace.lab_runs_root(workdir), "*", "*", "seed*", lab_runner.RUN_RECORD))):
    d = os.path.dirname(record_path)
    record = artifacts.read_json(record_path)
    initial = base.get(evaluate.BASELINE_TAG, {}).get("solved")
    after = _solved_accuracy(d, "final")
    runs.append({**record, "levels": level_accuracy(d, "final", levels),
                 "forgetting": None if initial is None or after is None else initial - after,
                 "solved": after, "workdir": d})
  return {"config": lab_json, "base": base, "runs": runs, "level_names": sorted({str(v) for v in levels.values()},
                                                                                key=int)}


def _problem_se(workdir: str, tag: str, levels: dict[str, int]) -> dict[str, float | None]:
  path = os.path.join(workspace.eval_dir(workdir, tag), "heldout.responses.jsonl")
  by_level: dict[str, list[float]] = {}
  for r in evaluate.read_responses(path):
    x = r["correct"] / r["k"]
    by_level.setdefault(str(levels.get(r["id"], 0)), []).append(x)
    by_level.setdefault("all", []).append(x)
  return {lv: mean_se(v)[1] for lv, v in by_level.items()}


def track_table(data: dict, track: str) -> list[str]:
  """Markdown rows of one track: base rows, then each method (mean ± SE over seeds, %)."""
  names = data["level_names"]
  header = ["method"] + [f"L{lv}" for lv in names] + ["all levels", "solved-set drop (points)", "seeds"]
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for tag, label in ((evaluate.BASELINE_TAG, "base (initial student)"), (lab_runner.TEACHER_TAG, "teacher")):
    b = data["base"].get(tag)
    if b is None or (tag == lab_runner.TEACHER_TAG and track == "self_distill"):
      continue
    cells = [_cell((b["levels"].get(lv), b["se"].get(lv), 1)) for lv in names + ["all"]]
    drop = "0.0" if tag == evaluate.BASELINE_TAG else MISSING
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {drop} | – |")
  methods = lab_config.run_names(tuple(data["config"].get("methods") or ())) or sorted({r["method"] for r in data["runs"]})
  for method in methods:
    runs = [r for r in data["runs"] if r["track"] == track and r["method"] == method and r["levels"]]
    if not runs:
      continue
    cells = [_cell(mean_se([r["levels"].get(lv) for r in runs])) for lv in names + ["all"]]
    drop = _cell(mean_se([r["forgetting"] for r in runs]))
    lines.append(f"| {lab_config.method_label(method)} | " + " | ".join(cells) + f" | {drop} | {len(runs)} |")
  return lines


def comparison_runs(methods: Sequence[str], budget: str) -> list[str]:
  """The run of each method in one comparison (a budget of lab_config.BUDGETS)."""
  return [f"{m}.{budget}" if lab_config.has_zero_weights(m) else m for m in methods]


def overview_table(data: dict, tracks: Sequence[str], budget: str) -> list[str]:
  """All-level accuracy per method (rows) and track (columns) in one comparison, with the paired
  per-seed difference to uniform weighting (same seed, same evaluation samples), in points, and the
  steps (= unique problems / batch size) the runs took."""
  header = (["method"] + [f"{t}: all levels" for t in tracks] + [f"{t}: vs uniform" for t in tracks]
            + [f"{t}: steps" for t in tracks])
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  run = {(r["track"], r["method"], r["seed"]): r for r in data["runs"] if r["levels"]}
  for name in comparison_runs(data["config"].get("methods", []), budget):
    cells, deltas, steps = [], [], []
    for t in tracks:
      mine = [r for (tr, m, _), r in run.items() if tr == t and m == name]
      cells.append(_cell(mean_se([r["levels"]["all"] for r in mine]), show_n=True))
      pairs = [r["levels"]["all"] - run[(t, "uniform", r["seed"])]["levels"]["all"] for r in mine
               if (t, "uniform", r["seed"]) in run]
      deltas.append(MISSING if name == "uniform" else _cell(mean_se(pairs)))
      taken = sorted({r["steps"] for r in mine})
      steps.append(MISSING if not taken else str(taken[0]) if len(taken) == 1 else f"{taken[0]}-{taken[-1]}")
    lines.append(f"| {lab_config.method_label(lab_config.split_run_name(name)[0])} | "
                 + " | ".join(cells + deltas + steps) + " |")
  return lines


def snr_dirs(workdir: str) -> list[str]:
  """Every SNR directory of the lab: the shared ones (initial student), then those at a training step
  (in uniform's first-seed runs)."""
  shared = sorted(glob.glob(os.path.join(workspace.snr_root(workspace.lab_shared_dir(workdir)), "*", "snr.csv")))
  runs = sorted(glob.glob(os.path.join(workspace.snr_root(os.path.join(
      workspace.lab_runs_root(workdir), "*", lab_runner.SNR_RUN, "seed*")), "*", "snr.csv")))
  return [os.path.dirname(p) for p in shared + runs]


def _snr_rows(directory: str) -> tuple[dict, list[dict]]:
  manifest = _read(os.path.join(directory, artifacts.MANIFEST)) or {}
  with open(os.path.join(directory, "snr.csv"), newline="") as f:
    return manifest, list(csv.DictReader(f))


def _snr_point(manifest: dict) -> str:
  step = (manifest.get("settings") or {}).get("step", -1)
  return "the initial student" if step < 0 else f"training step {step} (uniform, first seed)"


def snr_verdicts(workdir: str) -> list[str]:
  """One line per SNR point: does any pass-rate bin's signal share sit above its noise floor?"""
  lines = []
  for d in snr_dirs(workdir):
    manifest, rows = _snr_rows(d)
    above = [r["p"] for r in rows if r.get("above_floor") == "1"]
    verdict = f"bins p = {', '.join(above)} above their floor" if above else "no bin distinguishable from its floor"
    lines.append(f"- `{os.path.basename(d)}` at {_snr_point(manifest)}: **{verdict}** "
                 f"({manifest.get('counts', {}).get('problems')} problems, "
                 f"{manifest.get('divergence')} on {manifest.get('source')} sequences).")
  return lines


def bootstrap_lines(workdir: str) -> list[str]:
  rows = []
  for role in ("teacher", "student"):
    manifest = _read(os.path.join(workspace.lab_models_dir(workdir), role, artifacts.MANIFEST))
    if not manifest:
      continue
    spec = manifest.get("spec", {})
    log = os.path.join(workspace.lab_models_dir(workdir), f"{role}.train.jsonl")
    last = artifacts.read_jsonl_lines(log)[-1] if os.path.exists(log) else {}
    rows.append(f"| {role} | {spec.get('family')} | {spec.get('layers')} | {spec.get('hidden')} | "
                f"{spec.get('steps')} | {last.get('loss', float('nan')):.4f} | {manifest.get('seconds', 0):.0f} |")
  if not rows:
    return []
  # The student's manifest: the teacher's leaves out the student-only settings (formats, context share).
  b = (_read(os.path.join(workspace.lab_models_dir(workdir), "student", artifacts.MANIFEST)) or {}).get("bootstrap", {})
  return ["## Bootstrap", "", f"Trained from scratch with the PACED train step on one-hot targets (k = 1), "
          f"{b.get('batch_size')} solutions per step, lr {b.get('lr')} (cosine); the teacher on the "
          f"{b.get('teacher_format')!r} format, the student on the {b.get('student_format')!r} one, "
          f"{b.get('hint_fraction')} of the student's with the self-distillation context "
          f"({b.get('off_path_fraction')} of those from a prefix off the solution path).", "",
          "| model | family | layers | d | steps | final loss | seconds |", "|---|---|---|---|---|---|---|", *rows, ""]


TRACK_TITLES = {"distill": "Distillation (teacher -> student, forward KL on teacher references)",
                "self_distill": "Self-distillation (on-policy, reverse KL, frozen initial student with privileged context)",
                "two_stage": "Two-stage (forward KL on teacher references, then reverse KL on-policy)"}


def _plot_levels(data: dict, tracks: Sequence[str], path: str) -> None:
  names = data["level_names"]
  fig = Figure(figsize=(5 * len(tracks), 3.8))
  for i, track in enumerate(tracks):
    ax = fig.add_subplot(1, len(tracks), i + 1)
    x = np.arange(len(names))
    if evaluate.BASELINE_TAG in data["base"]:
      ax.plot(x, [100 * data["base"][evaluate.BASELINE_TAG]["levels"].get(lv, np.nan) for lv in names], "k--",
              label="initial student")
    for method in lab_config.run_names(tuple(data["config"].get("methods", ()))):
      runs = [r for r in data["runs"] if r["track"] == track and r["method"] == method and r["levels"]]
      if runs:
        stats = [mean_se([r["levels"].get(lv) for r in runs]) for lv in names]
        ax.errorbar(x, [100 * s[0] for s in stats], yerr=[100 * (s[1] or 0) for s in stats], marker="o", ms=3,
                    capsize=2, label=lab_config.method_label(method))
    ax.set(xticks=x, xticklabels=[f"L{lv}" for lv in names], ylabel="held-out accuracy (%)", title=track)
    ax.legend(fontsize=7)
  fig.tight_layout()
  with artifacts.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)


def _plot_histogram(hist: dict[int, list[int]], path: str) -> None:
  K = len(next(iter(hist.values()))) - 1
  fig = Figure(figsize=(6.5, 3.6))
  ax = fig.add_subplot()
  bottom = np.zeros(K + 1)
  for level, counts in hist.items():
    ax.bar(np.arange(K + 1), counts, bottom=bottom, label=f"L{level}")
    bottom += counts
  ax.set(xticks=np.arange(K + 1), xticklabels=[f"{c}/{K}" for c in range(K + 1)], xlabel="correct rollouts of K",
         ylabel="training problems", title="initial student's pass rates, by level")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  with artifacts.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)


def _plot_loss(data: dict, tracks: Sequence[str], path: str) -> None:
  fig = Figure(figsize=(5 * len(tracks), 3.6))
  for i, track in enumerate(tracks):
    ax = fig.add_subplot(1, len(tracks), i + 1)
    for j, method in enumerate(lab_config.run_names(tuple(data["config"].get("methods", ())))):
      for r in [r for r in data["runs"] if r["track"] == track and r["method"] == method]:
        metrics = workspace.train_metrics_file(r["workdir"])
        if os.path.exists(metrics):
          m = artifacts.read_jsonl_lines(metrics)
          ax.plot([x["step"] for x in m], [x["rkl"] if x["divergence"] == "rkl" else x["fkl"] for x in m],
                  color=f"C{j}", lw=0.8, alpha=0.7, label=lab_config.method_label(method) if r["seed"] == 0 else None)
    ax.set(xlabel="step", ylabel="reverse KL / token on RKL steps, else forward", title=track, yscale="log")
    ax.legend(fontsize=7)
  fig.tight_layout()
  with artifacts.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)


def build(workdir: str) -> str:
  """Write WORKDIR/report/{lab.md, results.json, *.png}; returns the markdown's path."""
  out = workspace.lab_report_dir(workdir)
  os.makedirs(out, exist_ok=True)
  data = collect(workdir)
  cfg = data["config"]
  tracks = [t for t in cfg.get("tracks", lab_config.TRACKS) if any(r["track"] == t for r in data["runs"])]
  lines = ["# Method lab", "", f"Workdir `{os.path.abspath(workdir)}`. Held-out accuracy mean@k in %; method rows "
           "are mean ± standard error over seeds, base rows ± standard error over problems.", ""]
  e = cfg.get("experiment", {})
  t = e.get("train", {})
  unique = cfg.get("unique_problems") or e.get("problems", {}).get("n_train")
  lines += [f"Every run: one pass over fresh problems (none seen twice), {t.get('batch_size')} problems a step, "
            f"lr {t.get('lr')}; a pool of {e.get('problems', {}).get('n_train')} training problems, "
            f"{unique} of them per run at equal data, and {e.get('problems', {}).get('n_heldout')} "
            "held-out "
            f"problems; pass rates from K = {e.get('pass_rate', {}).get('sampling', {}).get('num_samples')} rollouts; "
            f"evaluation mean@{e.get('eval', {}).get('sampling', {}).get('num_samples')}; seeds {cfg.get('seeds')}.", ""]
  verdicts = snr_verdicts(workdir)
  if verdicts:
    lines += ["## Is there a signal to weight? (gradient SNR, before any accuracy)", "",
              "Per pass-rate bin, the signal share rho_hat = SNR - noise floor(n) with a simultaneous bootstrap "
              "interval; a bin is above its floor when the interval excludes 0 (details and plots below).", ""]
    lines += verdicts + [""]
  if tracks:
    for budget, what in (("equal_data", "Equal unique data: every method gets the same first "
                          f"{unique} problems of the pool, one pass; methods that give some "
                          "weight 0 take fewer steps."),
                         ("equal_steps", "Equal steps: every method takes the same steps of the same batch size, "
                          "each problem new; methods that give some weight 0 draw from the whole pool.")):
      lines += [f"## Overview: {lab_config.BUDGET_LABELS[budget]}", "", what + " Held-out accuracy over all levels "
                "(mean ± SE over seeds, n = seeds), the paired per-seed difference to uniform, in points, and the "
                "steps taken (a method whose weights are never 0, like uniform or AKL, has one run serving both tables):", ""]
      lines += overview_table(data, tracks, budget) + [""]
  for track in tracks:
    lines += [f"## {TRACK_TITLES[track]}", ""] + track_table(data, track) + [""]
  images = []
  if tracks:
    _plot_levels(data, tracks, os.path.join(out, "accuracy_by_level.png"))
    _plot_loss(data, tracks, os.path.join(out, "training_kl.png"))
    images += ["accuracy_by_level.png", "training_kl.png"]
    lines += ["![accuracy by level](accuracy_by_level.png)", "", "![training KL](training_kl.png)", ""]
  lines += bootstrap_lines(workdir)
  shared = workspace.lab_shared_dir(workdir)
  if os.path.exists(os.path.join(workspace.pass_rates_dir(shared, 0), artifacts.MANIFEST)):
    hist = lab_runner.level_histogram(shared)
    _plot_histogram(hist, os.path.join(out, "pass_rates.png"))
    images.append("pass_rates.png")
    lines += ["## Initial student's pass rates", "", "Training problems per level (rows) by correct rollouts of K "
              "(columns):", "", "```", lab_runner.format_level_histogram(hist), "```", "",
              "![pass rates](pass_rates.png)", ""]
  for directory in snr_dirs(workdir):
    tag = os.path.basename(directory)
    name = f"snr_{tag}.png"
    with open(os.path.join(directory, "snr.png"), "rb") as f:
      artifacts.write_bytes(os.path.join(out, name), f.read())
    images.append(name)
    manifest, rows = _snr_rows(directory)
    settings = manifest.get("settings") or {}
    lines += [f"## Gradient SNR at {_snr_point(manifest)}: {tag}", "",
              f"Divergence `{manifest.get('divergence')}` on `{manifest.get('source')}` sequences, "
              f"{manifest.get('counts', {}).get('problems')} problems, count sketch D = {manifest.get('dim')}. "
              "The noise floor is what n problems of pure noise give; rho_hat is the signal share above it.", "",
              f"**{snr_stats.summary(rows, settings.get('confidence'))}**", "",
              f"![gradient SNR {tag}]({name})", "",
              "| p | n | SNR | noise floor | rho_hat | interval | above floor | w(p) (norm.) |",
              "|---|---|---|---|---|---|---|---|"]
    num = lambda x: f"{float(x):.3g}" if x not in ("", None) else MISSING
    for r in rows:
      lines.append(f"| {num(r['p'])} | {r['n']} | {num(r['snr'])} | {num(r['noise_floor'])} | {num(r.get('rho'))} | "
                   f"[{num(r.get('rho_lo'))}, {num(r.get('rho_hi'))}] | "
                   f"{'yes' if r.get('above_floor') == '1' else 'no'} | {num(r['w'])} |")
    lines.append("")
  seconds = [r["seconds"] for r in data["runs"]]
  if seconds:
    lines += ["## Timing", "", f"{len(seconds)} runs, {sum(seconds) / 60:.1f} min in all, median "
              f"{np.median(seconds):.0f} s per run (min {min(seconds):.0f}, max {max(seconds):.0f}).", ""]
  path = os.path.join(out, "lab.md")
  with artifacts.atomic_open(path) as f:
    f.write("\n".join(lines) + "\n")
  artifacts.write_json(os.path.join(out, "results.json"),
                       {"base": data["base"], "runs": [{k: v for k, v in r.items() if k != "workdir"} for r in data["runs"]]})
  for stale in set(map(os.path.basename, glob.glob(os.path.join(out, "*.png")))) - set(images):
    os.unlink(os.path.join(out, stale))
  return path
