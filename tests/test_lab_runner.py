"""Lab runner: method and track settings, the report's statistics, and a smoke run of the whole lab."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import numpy as np
import pytest

from paced_jax import workspace
from paced_jax import artifacts, config_dict
from paced_jax.evaluation import pass_rate
from paced_jax.lab import config as lab_config
from paced_jax.lab import report as lab_report
from paced_jax.lab import runner as lab_runner
from stage_fixtures import load_config_file


def _lab(tmp_path, variant="smoke", **changes):
  c = load_config_file("lab.py", variant)
  c.workdir = str(tmp_path / "lab")
  for key, value in changes.items():
    setattr(c, key, value)
  return config_dict.to_dataclass(lab_config.LabConfig, c)


@pytest.mark.parametrize("method,expected", [
    ("uniform", ("uniform", 1.0, 1.0, "")), ("hard_filter", ("hard_filter", 1.0, 1.0, "")),
    ("akl", ("uniform", 1.0, 1.0, "akl")), ("paced", ("paced", 1.0, 1.0, "")),
    ("paced_a2_b2", ("paced", 2.0, 2.0, "")), ("paced_a0.5_b2", ("paced", 0.5, 2.0, ""))])
def test_method_settings(method, expected):
  assert lab_config.method_settings(method) == expected


def test_unknown_method_or_track_is_refused(tmp_path):
  with pytest.raises(ValueError, match="paced_x"):
    _lab(tmp_path, methods=("paced_x",))
  with pytest.raises(ValueError, match="tracks"):
    _lab(tmp_path, tracks=("rl",))


def test_run_names_and_labels():
  assert lab_config.run_names(("uniform", "akl", "hard_filter", "paced_a0.5_b2")) == [
      "uniform", "akl", "hard_filter.equal_data", "hard_filter.equal_steps", "paced_a0.5_b2.equal_data",
      "paced_a0.5_b2.equal_steps"]
  assert lab_config.split_run_name("paced_a0.5_b2.equal_steps") == ("paced_a0.5_b2", "equal_steps")
  assert lab_config.split_run_name("paced_a0.5_b2") == ("paced_a0.5_b2", "")
  assert lab_config.method_label("paced.equal_data") == "PACED (1,1) (equal data)"


def test_run_configs_differ_only_where_they_should(tmp_path):
  lab = _lab(tmp_path, "")
  d = lab_runner.run_config(lab, "distill", "paced_a2_b2.equal_steps", 1)
  s = lab_runner.run_config(lab, "self_distill", "akl", 2)
  t = lab_runner.run_config(lab, "two_stage", "hard_filter.equal_steps", 0)
  # Fresh problems: one pass everywhere; equal steps draw from the whole pool, uniform-weight
  # methods from the first unique_problems; steps N / batch size; the two-stage track recomputes
  # pass rates at its midpoint, where every run keeps a checkpoint.
  N, B = lab.unique(), lab.experiment.train.batch_size
  assert N == lab.unique_problems < lab.experiment.problems.n_train
  assert d.train.one_pass and s.train.one_pass and t.train.one_pass
  assert (d.train.pool, s.train.pool, t.train.pool) == (0, N, 0)
  assert d.train.steps == s.train.steps == t.train.steps == N // B
  assert d.train.checkpoint_every == N // B // 2
  assert (d.pass_rate.recompute_every, s.pass_rate.recompute_every, t.pass_rate.recompute_every) == (0, 0, N // B // 2)
  assert (d.track, d.train.loss, d.prompts.teacher_context) == ("distill", "fkl", "none")
  assert d.teacher.endswith("models/teacher") and (d.weights.scheme, d.weights.alpha, d.weights.beta) == ("paced", 2, 2)
  assert (s.track, s.teacher, s.train.loss, s.prompts.teacher_context) == ("self_distill", "", "akl", "solution")
  assert (t.track, t.weights.scheme, t.train.loss) == ("two_stage", "hard_filter", "fkl")
  assert (d.train.seed, s.train.seed, s.train.rollout_sampling.seed) == (1, 2, 2)
  # Equal budgets: every run has the same steps, batch, learning rate and evaluation.
  for field in ("steps", "batch_size", "lr", "seq_len"):
    assert getattr(d.train, field) == getattr(s.train, field) == getattr(t.train, field)
  assert d.eval == s.eval == t.eval and d.problems == s.problems == t.problems
  with pytest.raises(ValueError, match="unique_problems"):
    _lab(tmp_path, "", unique_problems=5000)
  assert len({d.workdir, s.workdir, t.workdir}) == 3


def test_a_run_that_recomputes_pass_rates_leaves_other_runs_alone(tmp_path):
  """Regression: runs used to share one pass_rates/ symlink, so a run's recomputed round became the
  latest round, i.e. the starting weights, of every run after it."""
  lab = _lab(tmp_path, "")
  shared = workspace.lab_shared_dir(lab.workdir)
  for path_of in lab_runner.SHARED_LINKS:
    os.makedirs(path_of(shared))
  artifacts.write_manifest(workspace.pass_rates_dir(shared, 0), "pass_rates", histogram=[1, 1])
  first = workspace.lab_run_dir(lab.workdir, "distill", "paced", 0)
  second = workspace.lab_run_dir(lab.workdir, "distill", "uniform", 0)
  lab_runner._link_shared(lab, first)
  # What the trainer does at a recompute (trainer.train): write round latest + 1 in its workdir.
  assert pass_rate.latest_round(first) == 0
  artifacts.write_manifest(workspace.pass_rates_dir(first, pass_rate.latest_round(first) + 1), "pass_rates",
                           histogram=[0, 2])
  lab_runner._link_shared(lab, second)
  assert (pass_rate.latest_round(first), pass_rate.latest_round(second), pass_rate.latest_round(shared)) == (1, 0, 0)
  assert os.path.realpath(workspace.pass_rates_dir(second, 0)) == os.path.realpath(workspace.pass_rates_dir(shared, 0))
  for path_of in lab_runner.SHARED_LINKS:
    assert os.path.islink(path_of(second))
  # A run laid out the old way (pass_rates/ itself a link) gets its own directory.
  old = workspace.lab_run_dir(lab.workdir, "distill", "akl", 0)
  os.makedirs(old)
  os.symlink(os.path.relpath(workspace.pass_rates_root(shared), old), workspace.pass_rates_root(old))
  lab_runner._link_shared(lab, old)
  assert not os.path.islink(workspace.pass_rates_root(old)) and pass_rate.latest_round(old) == 0


def test_mean_se_and_level_accuracy(tmp_path):
  values = [0.2, 0.4, 0.9]
  mean, se, n = lab_report.mean_se(values)
  m = sum(values) / 3
  assert n == 3 and math.isclose(mean, m)
  assert math.isclose(se, math.sqrt(sum((v - m) ** 2 for v in values) / 2) / math.sqrt(3))
  assert lab_report.mean_se([0.5]) == (0.5, None, 1) and lab_report.mean_se([]) == (None, None, 0)
  d = tmp_path / "eval" / "final"
  d.mkdir(parents=True)
  rows = [("a", 1, 4), ("b", 1, 2), ("c", 2, 0), ("d", 2, 1)]
  with open(d / "heldout.responses.jsonl", "w") as f:
    for pid, _, correct in rows:
      f.write(json.dumps({"id": pid, "correct": correct, "k": 4}) + "\n")
  acc = lab_report.level_accuracy(str(tmp_path), "final", {pid: lv for pid, lv, _ in rows})
  assert acc == {"1": 0.75, "2": 0.125, "all": 0.4375}


@pytest.mark.slow
def test_smoke_lab_end_to_end(tmp_path, capsys):
  """One seed, uniform and PACED (at equal data and at equal steps), two steps on every track, the
  SNR at the initial student and at uniform's midpoint; the report has a table per track and per comparison."""
  lab = _lab(tmp_path)
  student, teacher = lab_runner.prepare_shared(lab)
  records = lab_runner.run_all(lab, student, teacher)
  assert len(records) == len(lab.tracks) * 3 * len(lab.seeds) == 9
  assert [r["method"] for r in records[:3]] == ["uniform"] * 3  # first: the SNR at a step reads them
  for r in records:
    assert r["steps"] == lab.unique() // lab.experiment.train.batch_size == 2
  run = workspace.lab_run_dir(lab.workdir, "distill", "paced.equal_data", 0)
  assert os.path.islink(os.path.join(run, "pass_rates", "0000")) and os.path.exists(os.path.join(run, "eval", "final"))
  assert not os.path.islink(os.path.join(run, "pass_rates"))
  assert len(open(os.path.join(run, "metrics", "train.jsonl")).read().splitlines()) == 2
  two_stage = workspace.lab_run_dir(lab.workdir, "two_stage", "uniform", 0)
  assert pass_rate.latest_round(two_stage) == 1  # its own midpoint recompute
  assert lab_runner.run_all(lab, student, teacher) == records  # finished runs are read back, not redone
  other = dataclasses.replace(lab, experiment=dataclasses.replace(
      lab.experiment, train=dataclasses.replace(lab.experiment.train, lr=1e-2)))
  with pytest.raises(artifacts.ArtifactError, match="train"):  # nor mixed with runs of other settings
    lab_runner.run_one(other, "distill", "paced.equal_data", 0, student, teacher)
  path = lab_report.build(lab.workdir)
  text = open(path).read()
  sections = re.split(r"^## ", text, flags=re.M)
  tables = {s.split("\n")[0]: [l for l in s.split("\n") if l.startswith("|")] for s in sections[1:]}
  for track, title in lab_report.TRACK_TITLES.items():
    rows = tables[title]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["method", "L1", "L2", "L3", "L4", "L5", "L6", "all levels", "solved-set drop (points)", "seeds"]
    labels = [r.strip("|").split("|")[0].strip() for r in rows[2:]]
    base = ["base (initial student)"] + ([] if track == "self_distill" else ["teacher"])
    assert labels == base + ["uniform", "PACED (1,1) (equal data)", "PACED (1,1) (equal steps)"]
    assert all(len(r.strip("|").split("|")) == len(header) for r in rows)
    assert all(r.strip("|").split("|")[-1].strip() == "1" for r in rows[2 + len(base):])
  for budget in ("equal data", "equal steps"):
    rows = tables[f"Overview: {budget}"]
    assert [r.strip("|").split("|")[0].strip() for r in rows[2:]] == ["uniform", "PACED (1,1)"]
  titles = [s.split("\n")[0] for s in sections[1:]]
  assert titles[0].startswith("Is there a signal") and titles[1] == "Overview: equal data"
  assert len(re.findall(r"^- `\w+` at ", sections[1], flags=re.M)) == 5  # 2 initial + 3 at step 1
  results = json.load(open(os.path.join(lab.workdir, "report", "results.json")))
  assert len(results["runs"]) == 9 and all(r["levels"] and "all" in r["levels"] for r in results["runs"])
  for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
    assert os.path.exists(os.path.join(os.path.dirname(path), image))
  for image in ("snr_distill.png", "snr_self_distill.png", "snr_distill_step1.png", "snr_self_distill_step1.png",
                "snr_two_stage_step1.png"):
    assert image in text
  assert np.isfinite(results["base"]["initial"]["levels"]["all"])
