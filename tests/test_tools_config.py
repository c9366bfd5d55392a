"""tools/config: every field with its default and help; the resolved config of a run."""

import json
import subprocess
import sys

from paced_jax import config as config_lib
from paced_jax.tools import config as config_tool
from stage_fixtures import ROOT


def test_every_field_is_listed_with_its_default():
  listed = {name: default for name, default, _ in config_tool.rows()}
  assert listed["train.lr"] == config_lib.TrainConfig().lr
  assert listed["pass_rate.sampling.num_samples"] == config_lib.SamplingConfig().num_samples
  helps = {name: text for name, _, text in config_tool.rows()}
  assert "fkl" in helps["train.loss"]  # the comment next to the declaration


def test_resolved_config_shows_overrides():
  out = subprocess.run([sys.executable, "-m", "paced_jax.tools.config", "--config=configs/tiny.py",
                        "--config.train.lr=0.25"], cwd=ROOT, capture_output=True, text=True, check=True)
  resolved = json.loads(out.stdout)
  assert resolved["train"]["lr"] == 0.25 and resolved["student"] == "tiny:qwen3:nano:0"


def test_every_stage_help_lists_config():
  for tool in ("pipeline", "train", "pass_rate", "reference", "evaluate", "snr", "report"):
    out = subprocess.run([sys.executable, "-m", f"paced_jax.tools.{tool}", "--help"], cwd=ROOT, capture_output=True,
                         text=True)
    assert "--config:" in out.stdout + out.stderr, tool
