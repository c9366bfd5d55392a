"""Run report: built from a finished tiny run, every linked image exists, missing inputs degrade to one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tiny_workspace
from paced_jax import artifacts, config_dict
from paced_jax.analysis import report, runs
from paced_jax.analysis import snr_stats
from paced_jax.training import trainer
from stage_fixtures import ROOT, tiny_experiment

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def linked_images(path: str) -> list[str]:
  with open(path) as f:
    return IMAGE.findall(f.read())


def write_eval(workdir, tag, results, retain=None):
  """Evaluation summaries with the fields evaluate.py / retain.py write (the ones the report reads)."""
  for name, (acc, se, k, n) in results.items():
    artifacts.write_json(os.path.join(workdir, "eval", tag, f"{name}.json"),
                         {"kind": "eval_benchmark", "benchmark": name, "tag": tag, "accuracy": acc, "se": se,
                          "k": k, "n_problems": n, "greedy_pass1": None})
  if retain is not None:
    artifacts.write_json(os.path.join(workdir, "eval", tag, "retain.json"),
                         {"kind": "eval_retain", "tag": tag, "accuracy": retain, "se": 0.01, "n_questions": 200})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A tiny distillation run trained for 2 steps, with config.json, evaluations and an SNR result."""
  prepared, student = tiny_workspace.prepared(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  shutil.copytree(prepared, workdir, ignore=shutil.ignore_patterns("snr", "report"))
  cfg = tiny_experiment(workdir, track="distill", train__steps=2, train__checkpoint_every=2)
  trainer.train(cfg, student, student, progress=False)
  artifacts.write_json(os.path.join(workdir, "config.json"), config_dict.to_json(cfg))
  # Sampling-based evaluation is tested in test_evaluate.py; here only its files matter.
  write_eval(workdir, "initial", {"heldout": (0.5, 0.125, 2, 8), "math500": (0.694, 0.02, 8, 500)}, retain=0.6)
  write_eval(workdir, "final", {"heldout": (0.625, 0.1, 2, 8), "math500": (0.794, 0.018, 8, 500)}, retain=0.59)
  with open(os.path.join(workdir, "eval", "final", "heldout.responses.jsonl"), "w") as f:
    f.write(json.dumps({"id": "q0", "truth": "7", "responses": ["3 + 4 = \\boxed{7}", "\\boxed{8}"],
                        "verdicts": [True, False], "extracted": ["7", "8"]}) + "\n")
  rng = np.random.default_rng(0)
  grads = np.concatenate([s * np.ones(16) + rng.normal(size=(6, 16)) for s in (0.0, 1.0, 0.0, 0.0, 0.0)])
  table = snr_stats.binned_snr(grads, np.repeat(np.arange(5), 6), 4, resamples=100)
  directory = os.path.join(workdir, "snr", "synthetic")
  w = np.array([0, 0.1875, 0.25, 0.1875, 0])
  snr_stats.write_csv(os.path.join(directory, "snr.csv"), table, w)
  snr_stats.plot(os.path.join(directory, "snr.png"), table, w)
  return workdir


def test_report_from_finished_run(finished):
  path = report.build_report(finished)
  assert path == os.path.join(finished, "report", "report.md")
  text = open(path).read()
  images = linked_images(path)
  assert {"pass_rates.png", "weights.png", "training.png", "bucket_loss.png", "snr_synthetic.png",
          "accuracy.png"} <= set(images)
  for image in images:
    with open(os.path.join(finished, "report", image), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", image
  assert "# PACED run report: paced / distill: fkl" in text
  assert "| track | `distill` |" in text
  assert "missing" not in text.split("## Configuration")[1].split("##")[0]
  # The paper's table layout: rows = checkpoints, columns = benchmarks, mean ± SE in %.
  assert "| run | heldout (mean@2) | math500 (mean@8) |" in text
  assert "| initial | 50.0 ± 12.5 | 69.4 ± 2.0 |" in text
  assert "| final | 62.5 ± 10.0 | 79.4 ± 1.8 |" in text
  # Forgetting: 60.0 -> 59.0 is a change of -1.0 point, a 1.7% relative drop.
  assert "| paced / distill: fkl | 60.0 | 59.0 (final) | -1.0 | 1.7% |" in text
  # Sample responses of the final evaluation, one correct and one wrong at least.
  samples = text.split("Sample responses")[1].split("##")[0]
  assert "- correct: `" in samples and "- wrong: `" in samples
  assert "24 problems, K = 4" in text and "| 2 |" in text  # pass rates; training ran 2 steps
  # SNR: each bin against its own floor. Bin p = 0.25 carries a shared direction of share 1 (n = 6,
  # X = 16); the other four are pure noise.
  snr_part = text.split("## Gradient SNR")[1]
  assert "| p | n | SNR | noise floor | rho_hat | interval | above floor | w (norm.) |" in snr_part
  assert "**1 of 5 bins sit above their noise floor" in snr_part and "p=0.25 (n=6" in snr_part
  assert f"| 0.25 | 6 | " in snr_part and f"| {16 / (16 * 5 - 2):.3g} | " in snr_part


def test_compare_adds_one_row_per_run(finished, tmp_path):
  other = str(tmp_path / "uniform_run")
  cfg = config_dict.to_json(tiny_experiment(other))
  cfg["weights"]["scheme"] = "uniform"
  artifacts.write_json(os.path.join(other, "config.json"), cfg)
  write_eval(other, "initial", {"heldout": (0.5, 0.125, 2, 8)}, retain=0.6)
  write_eval(other, "final", {"heldout": (0.55, 0.12, 2, 8), "math500": (0.768, 0.019, 8, 500)}, retain=0.58)
  bare = str(tmp_path / "bare_run")  # no config, no results: named by its directory, cells empty
  os.makedirs(bare)
  path = report.build_report(finished, compare=[other, bare])
  text = open(path).read()
  compared = text.split("Runs compared")[1]
  assert "| base (initial) | 50.0 ± 12.5 | 69.4 ± 2.0 |" in compared
  assert "| paced / distill: fkl (final) | 62.5 ± 10.0 | 79.4 ± 1.8 |" in compared
  assert "| uniform / two_stage: fkl then rkl (final) | 55.0 ± 12.0 | 76.8 ± 1.9 |" in compared
  assert "| bare_run (no evaluation) | – | – |" in compared
  assert "| uniform / two_stage: fkl then rkl | 60.0 | 58.0 (final) | -2.0 | 3.3% |" in text
  for image in linked_images(path):
    assert os.path.exists(os.path.join(finished, "report", image))


def test_missing_inputs_degrade_to_one_line(tmp_path):
  workdir = str(tmp_path / "empty")
  os.makedirs(os.path.join(workdir, "report"))
  with open(os.path.join(workdir, "report", "stale.png"), "wb") as f:
    f.write(b"old")  # an image from an earlier build that this one does not link
  path = report.build_report(workdir)
  text = open(path).read()
  assert linked_images(path) == []
  assert not os.path.exists(os.path.join(workdir, "report", "stale.png"))
  for line in ("config.json: missing", "pass_rates/0000: missing", "Needs the pass-rate histogram: missing",
               "metrics/train.jsonl: missing", "eval/: missing", "retain.json before (initial)", "snr/: missing"):
    assert line in text, line
  # Partial inputs: pass rates only -> histogram and weights, the rest still one line each.
  artifacts.write_manifest(os.path.join(workdir, "pass_rates", "0000"), "pass_rates", histogram=[3, 1, 2], mean_p=0.4)
  text = open(report.build_report(workdir)).read()
  assert linked_images(os.path.join(workdir, "report", "report.md")) == ["pass_rates.png", "weights.png"]
  assert "Round 0: 6 problems, K = 2" in text and "1 of 6 problems kept, 5 dropped" in text
  assert "metrics/train.jsonl: missing" in text


def test_eval_table_cells():
  assert report.format_cell({"accuracy": 0.794, "se": 0.0123}) == "79.4 ± 1.2"
  assert report.format_cell({"accuracy": 0.5, "se": None}) == "50.0"
  assert report.format_cell(None) == "–"
  lines = report.eval_table([("a", {"x": {"accuracy": 0.1, "se": 0.01, "k": 8}}),
                             ("b", {"x": {"accuracy": 0.2, "se": 0.02, "k": 4}, "y": {"accuracy": 1.0, "se": 0.0, "k": 1}})])
  assert lines[0] == "| run | x | y (mean@1) |"
  assert lines[2] == "| a | 10.0 ± 1.0 (k=8) | – |"
  assert lines[3] == "| b | 20.0 ± 2.0 (k=4) | 100.0 ± 0.0 |"


def test_tool_runs(finished):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "paced_jax.tools.report", f"--workdir={finished}"], env=env, cwd=ROOT,
                       check=True, capture_output=True, text=True).stdout
  assert out.strip().endswith(os.path.join("report", "report.md"))


def test_run_names_say_the_track_and_its_divergences():
  assert runs.run_name({"weights": {"scheme": "paced"}, "train": {"loss": "fkl"}, "track": "two_stage"}) == \
      "paced / two_stage: fkl then rkl"
  assert runs.run_name({"weights": {"scheme": "uniform"}, "train": {"loss": "akl"}, "track": "two_stage"}) == \
      "uniform / two_stage: akl"
  assert runs.run_name({"weights": {"scheme": "paced"}, "train": {"loss": "rkl"}, "track": "self_distill"}) == \
      "paced / self_distill: rkl"
