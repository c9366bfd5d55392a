"""The tiny pipeline end to end: every artifact, the exported model, and the report."""

import os
import re

import pytest
import transformers

from paced_jax import artifacts, config_dict, pipeline
from stage_fixtures import load_config_file
from test_metrics import _tb_counts, _tb_events


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path, capsys):
  c = load_config_file("tiny.py")
  c.workdir = str(tmp_path / "w")
  c.run_snr = True  # at the initial student and at the final checkpoint
  c.snr.step, c.snr.num_problems, c.snr.dim, c.snr.resamples = c.train.steps, 6, 64, 50
  cfg = config_dict.experiment(c)
  report_path = pipeline.run(cfg)
  w = cfg.workdir
  for directory, kind in [("problems", "problems"), ("pass_rates/0000", "pass_rates"), ("references", "references"),
                          ("teacher", "teacher_signal"), ("eval/initial", "eval"), ("eval/final", "eval"),
                          ("snr/initial", "snr"), (f"snr/step{cfg.train.steps}", "snr")]:
    artifacts.read_manifest(os.path.join(w, directory), kind)
  assert os.path.isdir(os.path.join(w, "checkpoints", str(cfg.train.steps)))
  lines = open(os.path.join(w, "metrics", "train.jsonl")).read().splitlines()
  assert len(lines) == cfg.train.steps
  events = _tb_events(os.path.join(w, "metrics", "tensorboard"))
  accuracy = {e.step: v.simple_value for e in events for v in e.summary.value if v.tag == "eval/heldout/accuracy"}
  for tag, step in [("initial", 0), ("final", cfg.train.steps)]:
    index = artifacts.read_manifest(os.path.join(w, "eval", tag), "eval")["benchmarks"]["heldout"]
    assert accuracy[step] == pytest.approx(index["accuracy"], abs=1e-6)
  assert transformers.AutoModelForCausalLM.from_pretrained(os.path.join(w, "export")) is not None
  report = open(report_path).read()
  images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
  assert images and all(os.path.exists(os.path.join(os.path.dirname(report_path), i)) for i in images)
  assert "final" in report and "initial" in report
  assert "### initial" in report and f"### step{cfg.train.steps}" in report  # the SNR sections
  out = capsys.readouterr().out
  assert "report:" in out and "trained student" in out
  # A second run finds everything complete, redoes nothing expensive, and logs nothing again.
  logged = _tb_counts(os.path.join(w, "metrics", "tensorboard"))
  assert pipeline.run(cfg) == report_path
  assert _tb_counts(os.path.join(w, "metrics", "tensorboard")) == logged
