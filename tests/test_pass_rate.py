"""Pass-rate stage: records, histogram, resume after a kill, refusal of mismatched settings."""

import json
import os

import jax
import pytest

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax.config import ConfigError
from paced_jax.evaluation import pass_rate
from stage_fixtures import load_student, tiny_experiment


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  cfg = tiny_experiment(str(tmp_path_factory.mktemp("w")))
  return load_student(cfg, jax.devices()[:1])


def test_records_and_manifest(tmp_path, student):
  cfg = tiny_experiment(str(tmp_path))
  directory = pass_rate.run(cfg, student)
  records = pass_rate.read_records(directory)
  manifest = artifacts.read_manifest(directory, pass_rate.KIND)
  K = cfg.pass_rate.sampling.num_samples
  assert len(records) == cfg.problems.n_train and manifest["K"] == K
  for r in records:
    assert r["K"] == K and 0 <= r["correct"] <= K and r["p"] == r["correct"] / K
    assert len(r["lengths"]) == K and all(1 <= n <= cfg.pass_rate.sampling.max_new_tokens for n in r["lengths"])
  assert sum(manifest["histogram"]) == len(records)
  assert manifest["student_fingerprint"] == student.fingerprint
  assert not os.path.exists(os.path.join(directory, "parts"))


def test_killed_run_resumes_to_identical_file(tmp_path, student, monkeypatch):
  monkeypatch.setattr(pass_rate, "CHUNK_PROBLEMS", 5)
  clean = pass_rate.run(tiny_experiment(str(tmp_path / "clean")), student)
  cfg = tiny_experiment(str(tmp_path / "killed"))
  real, calls = pass_rate._chunk_records, []

  def dies_on_third_chunk(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt("killed")
    return real(*args, **kwargs)

  monkeypatch.setattr(pass_rate, "_chunk_records", dies_on_third_chunk)
  with pytest.raises(KeyboardInterrupt):
    pass_rate.run(cfg, student)
  parts = os.listdir(os.path.join(workspace.pass_rates_dir(cfg.workdir, 0), "parts"))
  assert sorted(p for p in parts if p.startswith("part-")) == ["part-00000.jsonl", "part-00001.jsonl"]
  monkeypatch.setattr(pass_rate, "_chunk_records", real)
  resumed = pass_rate.run(cfg, student)
  read = lambda d: open(os.path.join(d, pass_rate.RECORDS), "rb").read()
  assert read(resumed) == read(clean)


def test_refuses_other_settings(tmp_path, student):
  cfg = tiny_experiment(str(tmp_path))
  pass_rate.run(cfg, student)
  other = tiny_experiment(str(tmp_path), pass_rate__sampling__num_samples=2)
  with pytest.raises(artifacts.ArtifactError, match="field 'K' is 4 but this run expects 2"):
    pass_rate.run(other, student)


def test_corrupted_records_refused(tmp_path, student):
  cfg = tiny_experiment(str(tmp_path))
  directory = pass_rate.run(cfg, student)
  with open(os.path.join(directory, pass_rate.RECORDS), "a") as f:
    f.write("{}\n")
  with pytest.raises(artifacts.ArtifactError, match="checksum"):
    pass_rate.read_records(directory)


def test_a_prompt_too_long_for_the_model_is_refused_by_id_before_anything_is_written(tmp_path, student):
  source = tmp_path / "long.jsonl"
  rows = [{"id": "short", "problem": "1 + 1", "answer": "2"}, {"id": "huge", "problem": "7 " * 1500, "answer": "7"}]
  source.write_text("".join(json.dumps(r) + "\n" for r in rows))
  cfg = tiny_experiment(str(tmp_path / "w"), problems__source=str(source), problems__n_train=2, problems__n_heldout=0)
  with pytest.raises(ConfigError, match="problem 'huge': its pass_rate.sampling prompt has 30"):
    pass_rate.run(cfg, student)
  assert not os.path.exists(workspace.pass_rates_root(cfg.workdir))
