"""Evaluate stage: mean@k and its standard error, files, resume, bad benchmark files, a real tiny run."""

import json
import types
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from paced_jax import workspace
from paced_jax import artifacts, config_dict
from paced_jax.evaluation import benchmarks
from paced_jax.evaluation import evaluate
from paced_jax.model import tiny as tiny_model
from paced_jax.evaluation import rollouts
from paced_jax.evaluation.rollouts import problem_key
from paced_jax.problems.records import ProblemFileError
from paced_jax.sampling.sampler import Rollout
from stage_fixtures import ROOT, load_config_file, load_student, tiny_experiment

# Problem answers 1..4; the fake sampler answers problem i correctly in PLAN[i] of its K = 2 samples.
PLAN = [2, 0, 1, 2]
GREEDY_RIGHT = [True, False, False, True]


def write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


class FakeSampler:
  """Answers from PLAN, looked up by the stable prompt key of each problem id."""

  def __init__(self, tokenizer, ids, calls):
    self.tokenizer, self.calls = tokenizer, calls
    self.index = {problem_key(pid): i for i, pid in enumerate(ids)}

  @classmethod
  def for_model(cls, model, params=None):
    return cls(model.tokenizer, model.ids, model.calls)

  def generate(self, prompts, cfg, *, prompt_keys, progress=True, prompt_len=None):
    self.calls.append(len(prompts))
    out = []
    for p, key in enumerate(prompt_keys):
      i = self.index[key]
      truth = i + 1
      if cfg.greedy:
        texts = [f"\\boxed{{{truth if GREEDY_RIGHT[i] else truth + 10}}}"]
      else:
        texts = [f"so \\boxed{{{truth if s < PLAN[i] else truth + 10}}}" for s in range(cfg.num_samples)]
      out.append([Rollout(p, s, np.asarray(self.tokenizer.encode(t, add_special_tokens=False) + [2]), True)
                  for s, t in enumerate(texts)])
    return out


class FakeModel:
  def __init__(self, ids):
    self.tokenizer = tiny_model.char_tokenizer()
    self.params, self.fingerprint, self.calls, self.ids = None, "fake-model", [], ids
    self.cfg = types.SimpleNamespace(max_position_embeddings=2048)


@pytest.fixture(autouse=True)
def fake_sampler(monkeypatch):
  """FakeModel's samples come from PLAN; a real model (test_real_tiny_model) samples for real."""
  real = rollouts.Sampler

  class Dispatch:
    @staticmethod
    def for_model(model, params=None):
      return (FakeSampler if isinstance(model, FakeModel) else real).for_model(model, params)
  monkeypatch.setattr(rollouts, "Sampler", Dispatch)


@pytest.fixture
def bench_file(tmp_path):
  rows = [{"id": f"q{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(len(PLAN))]
  return write_jsonl(tmp_path / "bench.jsonl", rows)


def experiment(workdir, benches, greedy_pass1=False, num_samples=2):
  c = load_config_file("tiny.py")
  c.workdir = str(workdir)
  c.eval.benchmarks = list(benches)
  c.eval.greedy_pass1 = greedy_pass1
  c.eval.sampling.num_samples = num_samples
  return config_dict.experiment(c)


def test_mean_at_k_hand_computed():
  p = np.array([1.0, 0.0, 0.5, 1.0])  # correct [2, 0, 1, 2] of k = 2
  acc, se = evaluate.mean_at_k([2, 0, 1, 2], 2)
  # std(ddof=1): squared deviations from 0.625 sum to 0.6875, / 3, sqrt, / sqrt(4).
  assert acc == pytest.approx(0.625) and se == pytest.approx(math.sqrt(0.6875 / 3) / 2)
  assert se == pytest.approx(p.std(ddof=1) / 2)
  assert evaluate.mean_at_k([3], 4) == (0.75, None) and evaluate.mean_at_k([], 4) == (None, None)


def test_stage_files_accuracy_and_resume(tmp_path, bench_file, monkeypatch):
  cfg = experiment(tmp_path / "w", [bench_file + ":name=toy"], greedy_pass1=True)
  model = FakeModel([f"q{i}" for i in range(len(PLAN))])
  monkeypatch.setattr(evaluate, "CHUNK_PROBLEMS", 3)
  result = evaluate.evaluate(cfg, model, tag="initial")
  s = result["benchmarks"]["toy"]
  assert s["accuracy"] == pytest.approx(0.625) and s["se"] == pytest.approx(math.sqrt(0.6875 / 3) / 2)
  assert s["greedy_pass1"] == pytest.approx(0.5) and s["histogram"] == [1, 1, 2]
  assert (s["k"], s["n_problems"], s["model_fingerprint"], s["tag"]) == (2, 4, "fake-model", "initial")
  assert s["sampling"]["temperature"] == 0.7 and s["sampling"]["top_k"] == 20
  directory = workspace.eval_dir(cfg.workdir, "initial")
  assert sorted(os.listdir(directory)) == ["manifest.json", "toy.json", "toy.responses.jsonl"]
  assert artifacts.read_json(os.path.join(directory, "toy.json")) == s
  records = evaluate.read_responses(os.path.join(directory, "toy.responses.jsonl"))
  assert [r["correct"] for r in records] == PLAN and [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
  assert records[2]["extracted"] == ["3", "13"] and len(records[2]["responses"]) == 2
  assert artifacts.read_manifest(directory, evaluate.KIND)["benchmarks"]["toy"]["accuracy"] == pytest.approx(0.625)
  assert "toy" in evaluate.format_table(result)

  calls = len(model.calls)
  again = evaluate.evaluate(cfg, model, tag="initial")
  assert again["benchmarks"]["toy"] == s and len(model.calls) == calls  # complete: reused
  assert (result["new"], again["new"]) == (["toy"], [])  # made by the first call, read back by the second
  other = experiment(tmp_path / "w", [bench_file + ":name=toy"], greedy_pass1=True, num_samples=4)
  with pytest.raises(artifacts.ArtifactError, match="field 'k' is 2 but this run expects 4"):
    evaluate.evaluate(other, model, tag="initial")


def test_killed_run_resumes_from_parts(tmp_path, bench_file, monkeypatch):
  monkeypatch.setattr(evaluate, "CHUNK_PROBLEMS", 1)
  cfg = experiment(tmp_path / "w", [bench_file])
  model = FakeModel([f"q{i}" for i in range(len(PLAN))])
  real, calls = evaluate._chunk_records, []

  def dies_on_third_chunk(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt("killed")
    return real(*args, **kwargs)

  monkeypatch.setattr(evaluate, "_chunk_records", dies_on_third_chunk)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(cfg, model, tag="t")
  parts = os.listdir(os.path.join(workspace.eval_dir(cfg.workdir, "t"), "parts-bench"))
  assert sorted(p for p in parts if p.startswith("part-")) == ["part-00000.jsonl", "part-00001.jsonl"]
  summary = evaluate.evaluate(cfg, model, tag="t")["benchmarks"]["bench"]
  assert len(calls) == 5 and summary["accuracy"] == pytest.approx(0.625)  # 2 done, 1 killed, 2 to go
  assert not os.path.exists(os.path.join(workspace.eval_dir(cfg.workdir, "t"), "parts-bench"))


def test_what_a_killed_run_finished_is_still_new_when_the_rerun_reads_it_back(tmp_path, bench_file, monkeypatch):
  cfg = experiment(tmp_path / "w", [bench_file + ":name=a", bench_file + ":name=b"])
  model = FakeModel([f"q{i}" for i in range(len(PLAN))])
  real = evaluate.run_benchmark

  def killed_in_b(cfg, model, bench, **kwargs):
    if bench.name == "b":
      raise KeyboardInterrupt("killed")
    return real(cfg, model, bench, **kwargs)

  monkeypatch.setattr(evaluate, "run_benchmark", killed_in_b)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(cfg, model, tag="t")
  assert os.path.exists(os.path.join(workspace.eval_dir(cfg.workdir, "t"), "a.json"))
  monkeypatch.setattr(evaluate, "run_benchmark", real)
  # `a` is read back, but no call returned it (nor logged it) before: no manifest listed it.
  assert evaluate.evaluate(cfg, model, tag="t")["new"] == ["a", "b"]
  assert evaluate.evaluate(cfg, model, tag="t")["new"] == []


@pytest.mark.parametrize("rows, match", [
    ([{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "solution": "4"}], r"line 2: field 'answer': missing"),
    ([{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}, '{"problem": "3+3?", "answer": '],
     r"line 3: invalid JSON"),
])
def test_bad_benchmark_file_names_the_line(tmp_path, rows, match):
  path = write_jsonl(tmp_path / "bad.jsonl", rows)
  cfg = experiment(tmp_path / "w", [path])
  model = FakeModel([])
  with pytest.raises(ProblemFileError, match=f"bad.jsonl: {match}"):
    evaluate.evaluate(cfg, model, tag="t")
  assert model.calls == []  # refused before any sampling


def test_tool_reports_bad_file_without_traceback(tmp_path):
  tiny_experiment(str(tmp_path / "w"))  # prepared problems: only the retain file is wrong
  path = write_jsonl(tmp_path / "mmlu.jsonl", [{"question": "q?", "choices": ["a", "b", "c", "d"], "answer": 1},
                                               {"question": "r?", "choices": ["a", "b", "c", "d"]}])
  proc = subprocess.run([sys.executable, "-m", "paced_jax.tools.evaluate", "--config=configs/tiny.py",
                         f"--config.workdir={tmp_path / 'w'}", f"--config.eval.retain_set={path}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "mmlu.jsonl: line 2: field 'answer'" in proc.stderr


def test_benchmark_specs(tmp_path, bench_file):
  assert benchmarks.split_spec("/a/b.jsonl") == ("/a/b.jsonl", {})
  assert benchmarks.split_spec("x.parquet:name=aime24,fields=aime") == ("x.parquet", {"name": "aime24", "fields": "aime"})
  b = benchmarks.load_benchmark(bench_file + ":name=toy,n=3,field_solution=none", str(tmp_path))
  assert (b.name, len(b.problems), b.identity["n"], b.identity["fields"]["solution"]) == ("toy", 3, 3, None)
  with pytest.raises(benchmarks.BenchmarkError, match="unknown option 'nme=toy'"):
    benchmarks.load_benchmark(bench_file + ":nme=toy", str(tmp_path))
  with pytest.raises(benchmarks.BenchmarkError, match="both write results named 'bench'"):
    benchmarks.load_benchmarks([bench_file, bench_file + ":n=2"], str(tmp_path))
  champ = benchmarks.load_benchmark("builtin:champ", str(tmp_path))
  assert champ.name == "champ" and len(champ.problems) == 121
  assert all(p.answer.lstrip("-").replace("/", "").replace(".", "").isdigit() for p in champ.problems)
  with pytest.raises(benchmarks.BenchmarkError, match="unknown built-in"):
    benchmarks.load_benchmark("builtin:nope", str(tmp_path))
  with pytest.raises(benchmarks.BenchmarkError, match="not prepared; run the prepare stage"):
    benchmarks.load_benchmark("heldout", str(tmp_path))


def test_real_tiny_model(tmp_path):
  cfg = tiny_experiment(str(tmp_path), eval__retain_set="builtin:arith_mc:n=4")
  student = load_student(cfg, jax.devices()[:1])
  result = evaluate.evaluate(cfg, student, tag="initial")
  s = result["benchmarks"]["heldout"]
  K = cfg.eval.sampling.num_samples
  assert (s["n_problems"], s["k"], s["model_fingerprint"]) == (cfg.problems.n_heldout, K, student.fingerprint)
  records = evaluate.read_responses(os.path.join(workspace.eval_dir(cfg.workdir, "initial"), "heldout.responses.jsonl"))
  assert len(records) == cfg.problems.n_heldout and all(len(r["responses"]) == K for r in records)
  assert s["accuracy"] == pytest.approx(np.mean([r["correct"] / K for r in records]))
  r = result["retain"]
  assert r["n_questions"] == 4 and 0 <= r["accuracy"] <= 1 and r["forgetting"] is None
  # Other params of the same model get their own identity, so their results are kept apart.
  fp = evaluate.params_fingerprint(student.params)
  assert fp == evaluate.params_fingerprint(student.params)
  assert fp != evaluate.params_fingerprint(jax.tree.map(lambda x: x * 1.01, student.params))
