"""Problem loaders, built-in generators and the prepare stage."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paced_jax import artifacts
from paced_jax.config import PromptConfig
from paced_jax.problems import prompts
from paced_jax.problems import builtin
from paced_jax.problems import prepare as prepare_lib
from paced_jax.problems import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_jsonl(path, rows) -> str:
  with open(path, "w") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
  return str(path)


# ---------------------------------------------------------------------------------------------
# Built-in generators

@pytest.mark.parametrize("name", sorted(builtin.BUILTIN_SOURCES))
def test_builtin_deterministic_and_splits_disjoint(name):
  train = builtin.generate(name, 40, seed=3, split="train")
  assert train == builtin.generate(name, 40, seed=3, split="train")
  assert train != builtin.generate(name, 40, seed=4, split="train")
  heldout = builtin.generate(name, 20, seed=3, split="heldout")
  # The partition does not depend on the seed: no seed's held-out set meets any seed's train set.
  other_heldout = builtin.generate(name, 20, seed=4, split="heldout")
  train_prompts = {p.prompt for p in train}
  assert len(train_prompts) == len(train) and len({p.prompt for p in heldout}) == len(heldout)
  assert not train_prompts & {p.prompt for p in heldout + other_heldout}
  assert not {p.id for p in train} & {p.id for p in heldout}
  assert all(p.source == name.removesuffix("_1digit") and p.answer for p in train + heldout)
  # A longer list extends a shorter one, so n does not change which problems come first.
  assert builtin.generate(name, 10, seed=3, split="train") == train[:10]


def _brute_force(a: int, op: str, b: int) -> int:
  if op == "+":
    total = a
    for _ in range(b):
      total += 1
    return total
  return next(x for x in range(a + 1) if x + b == a)


@pytest.mark.parametrize("name,levels", [("easy_arithmetic", {1, 2, 3}), ("easy_arithmetic_1digit", {1, 2})])
def test_easy_arithmetic_answers_and_levels(name, levels):
  pool = builtin.generate(name, 120, seed=0, split="train") + builtin.generate(name, 30, seed=0, split="heldout")
  for p in pool:
    m = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\? Answer with the number only\.", p.prompt)
    assert m, p.prompt
    a, op, b = int(m[1]), m[2], int(m[3])
    assert int(p.answer) == _brute_force(a, op, b) >= 0
    assert p.level == {(1, "+"): 1, (1, "-"): 2}.get((len(str(a)), op), 3 if len(str(b)) == 1 else 4)
  assert {p.level for p in pool} == levels


def test_easy_arithmetic_exhausts_cleanly():
  every = builtin.generate("easy_arithmetic_1digit", 0, 0, "train")
  assert every == []
  with pytest.raises(ValueError, match=r"only \d+ distinct train problems exist, asked for 1000"):
    builtin.generate("easy_arithmetic_1digit", 1000, 0, "train")


def _floor_eval(node):
  """Integer arithmetic with Python floor division, the semantics reasoning-gym computes with."""
  if isinstance(node, ast.Expression):
    return _floor_eval(node.body)
  if isinstance(node, ast.Constant) and isinstance(node.value, int):
    return node.value
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
    return -_floor_eval(node.operand)
  if isinstance(node, ast.BinOp):
    x, y = _floor_eval(node.left), _floor_eval(node.right)
    ops = {ast.Add: lambda: x + y, ast.Sub: lambda: x - y, ast.Mult: lambda: x * y, ast.Div: lambda: x // y}
    return ops[type(node.op)]()
  raise ValueError(f"unexpected node {ast.dump(node)}")


@pytest.mark.parametrize("name", ["basic_arithmetic", "gsm_symbolic"])
def test_reasoning_gym_answers_score_full_marks(name):
  import reasoning_gym
  seed, split = 7, "heldout"
  got = builtin.generate(name, 25, seed, split)
  dataset = reasoning_gym.create_dataset(name, seed=records.split_seed(seed, split), size=10_000, **builtin.RG_CONFIGS[name])
  for p in got:
    item = dataset[int(p.id.rsplit("/", 1)[1])]
    assert item["question"] == p.prompt
    assert dataset.score_answer(p.answer, item) == 1.0
    assert dataset.score_answer(str(int(float(p.answer)) + 1), item) < 1.0
    if name == "basic_arithmetic":
      expression = re.fullmatch(r"Calculate (.*)\.", p.prompt)[1]
      assert _floor_eval(ast.parse(expression, mode="eval")) == int(p.answer)
      assert 1 <= p.level <= 5 and p.solution is None
    else:
      assert p.solution and p.level is None


def test_generate_builtin_rejects_unknowns():
  with pytest.raises(ValueError, match="unknown built-in source 'nope'"):
    builtin.generate("nope", 1, 0, "train")
  with pytest.raises(ValueError, match="unknown split 'test'"):
    builtin.generate("easy_arithmetic", 1, 0, "test")


# ---------------------------------------------------------------------------------------------
# File loaders

MATH500_ROWS = [
    {"problem": "Compute $1+1$.", "solution": "It is $\\boxed{2}$.", "answer": "2", "subject": "Algebra",
     "level": 1, "unique_id": "test/algebra/1.json"},
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "$\\boxed{\\frac12}$", "answer": "\\frac{1}{2}",
     "subject": "Algebra", "level": 3, "unique_id": "test/algebra/2.json"},
]


def test_load_math500_like_jsonl(tmp_path):
  path = _write_jsonl(tmp_path / "math500.jsonl", MATH500_ROWS[:1] + [""] + MATH500_ROWS[1:])
  got = records.load_problem_file(path, records.FieldMap(id="unique_id"))
  assert got == [
      records.Problem("test/algebra/1.json", "Compute $1+1$.", "2", "It is $\\boxed{2}$.", "math500", 1),
      records.Problem("test/algebra/2.json", "Simplify $\\frac{2}{4}$.", "\\frac{1}{2}", "$\\boxed{\\frac12}$",
                "math500", 3),
  ]
  assert records.load_problem_file(path, records.MATH500_FIELDS, source="MATH-500") == [
      p.__class__(**{**p.__dict__, "source": "MATH-500"}) for p in got]


def _aime_table():
  return pa.table({
      "ID": ["2024-I-1", "2024-I-2", "2024-II-1"],
      "Problem": ["Find $x$.", "Find $y$.", "Find $z$."],
      "Solution": ["x is 33", None, "z is 7"],
      "Answer": pa.array([33, 25, 7], pa.int64()),
  })


def test_load_aime_like_parquet(tmp_path):
  path = str(tmp_path / "aime_2024.parquet")
  pq.write_table(_aime_table(), path)
  fields = records.FieldMap(id="ID", prompt="Problem", answer="Answer", solution="Solution")
  got = records.load_problem_file(path, fields)
  assert [(p.id, p.answer, p.solution, p.level) for p in got] == [
      ("2024-I-1", "33", "x is 33", None), ("2024-I-2", "25", None, None), ("2024-II-1", "7", "z is 7", None)]
  assert got == records.load_problem_file(path, records.AIME_FIELDS, source="aime_2024")


def test_load_json_array_fallback_ids_and_number_answers(tmp_path):
  path = tmp_path / "mixed.json"
  path.write_text(json.dumps([
      {"problem": "a", "answer": 3.0, "level": "Level 4"},
      {"problem": "b", "answer": 0.5, "level": "Level ?"},
      {"problem": "c", "answer": -12},
  ]))
  got = records.load_problem_file(str(path))
  assert [(p.id, p.answer, p.solution, p.level) for p in got] == [
      ("mixed-0", "3", None, 4), ("mixed-1", "0.5", None, None), ("mixed-2", "-12", None, None)]
  # No id column configured: every row is numbered, even rows that have an `id`.
  assert [p.id for p in records.load_problem_file(str(path), records.FieldMap(id=None))] == ["mixed-0", "mixed-1", "mixed-2"]


GOOD = {"id": "a", "problem": "p", "answer": "1"}


@pytest.mark.parametrize("rows,message", [
    ([GOOD, "", '{"id": "b", "problem": "p", "answer": '], r"line 3: invalid JSON"),
    ([GOOD, {"id": "b", "problem": "p"}], r"line 2: field 'answer': missing \(the row has 'id', 'problem'\)"),
    ([GOOD, {"id": "b", "problem": "p", "answer": ["1"]}], r"line 2: field 'answer': expected a non-empty"),
    ([GOOD, {"id": "b", "problem": "p", "answer": True}], r"line 2: field 'answer': expected a non-empty"),
    ([GOOD, {"id": "b", "problem": "p", "answer": "  "}], r"line 2: field 'answer': expected a non-empty"),
    ([GOOD, {"id": "b", "problem": 5, "answer": "1"}], r"line 2: field 'problem': expected a non-empty string"),
    ([GOOD, {"id": "b", "problem": "p", "answer": "1", "solution": 3}], r"line 2: field 'solution': expected a"),
    ([GOOD, {"id": 1.5, "problem": "p", "answer": "1"}], r"line 2: field 'id': expected a non-empty string"),
    ([GOOD, {"id": "b", "problem": "p", "answer": "1", "level": [1]}], r"line 2: field 'level': expected an int"),
    ([GOOD, "", GOOD], r"line 3: field 'id': duplicate id 'a' \(first at line 1\)"),
    ([GOOD, "[1, 2]"], r"line 2: expected an object, got list"),
])
def test_bad_jsonl_rows_name_file_line_and_field(tmp_path, rows, message):
  path = _write_jsonl(tmp_path / "bad.jsonl", rows)
  with pytest.raises(records.ProblemFileError, match=re.escape(path) + ": " + message):
    records.load_problem_file(path)


def test_bad_parquet_row_names_row_and_field(tmp_path):
  path = str(tmp_path / "aime.parquet")
  table = _aime_table().set_column(3, "Answer", pa.array([33, None, 7], pa.int64()))
  pq.write_table(table, path)
  with pytest.raises(records.ProblemFileError, match=re.escape(path) + r": row 1: field 'Answer': missing"):
    records.load_problem_file(path, records.AIME_FIELDS)


def test_bad_files(tmp_path):
  (tmp_path / "x.csv").write_text("a,b\n")
  with pytest.raises(records.ProblemFileError, match="unsupported file type"):
    records.load_problem_file(str(tmp_path / "x.csv"))
  (tmp_path / "x.parquet").write_bytes(b"not parquet")
  with pytest.raises(records.ProblemFileError, match="not a readable parquet file"):
    records.load_problem_file(str(tmp_path / "x.parquet"))
  (tmp_path / "x.json").write_text('{"problem": "a"}')
  with pytest.raises(records.ProblemFileError, match="expected a JSON array"):
    records.load_problem_file(str(tmp_path / "x.json"))
  with pytest.raises(records.ProblemFileError, match="no such file"):
    records.load_problem_file(str(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------------------------------------
# The prepare stage

def test_prepare_builtin_writes_manifest_and_reads_back(tmp_path):
  directory = prepare_lib.prepare(str(tmp_path), "builtin:easy_arithmetic", n_train=30, n_heldout=10, seed=1)
  assert directory == str(tmp_path / "problems")
  assert sorted(os.listdir(directory)) == ["heldout.jsonl", "manifest.json", "train.jsonl"]
  manifest = artifacts.read_manifest(directory, "problems")
  assert manifest["counts"] == {"train": 30, "heldout": 10}
  assert manifest["config"]["generator"]["levels"] == [1, 2, 3]
  for split, n in [("train", 30), ("heldout", 10)]:
    assert manifest["checksums"][f"{split}.jsonl"] == artifacts.sha256_file(os.path.join(directory, f"{split}.jsonl"))
    assert prepare_lib.read_problems(str(tmp_path), split) == builtin.generate("easy_arithmetic", n, 1, split)


def test_prepare_reuses_identical_and_refuses_different(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  prepare_lib.prepare(workdir, "builtin:easy_arithmetic", n_train=20, n_heldout=5, seed=0)
  before = os.stat(os.path.join(workdir, "problems", "train.jsonl")).st_mtime_ns

  def fail(*args):
    raise AssertionError("a complete directory must not be generated again")

  monkeypatch.setitem(builtin.BUILTIN_SOURCES, "easy_arithmetic", fail)
  prepare_lib.prepare(workdir, "builtin:easy_arithmetic", n_train=20, n_heldout=5, seed=0)
  assert os.stat(os.path.join(workdir, "problems", "train.jsonl")).st_mtime_ns == before
  with pytest.raises(artifacts.ArtifactError, match="field 'n_train' is 20 but this run expects 21"):
    prepare_lib.prepare(workdir, "builtin:easy_arithmetic", n_train=21, n_heldout=5, seed=0)
  with pytest.raises(artifacts.ArtifactError, match="field 'source' is 'builtin:easy_arithmetic' but this run "
                     "expects 'builtin:easy_arithmetic_1digit'"):
    prepare_lib.prepare(workdir, "builtin:easy_arithmetic_1digit", n_train=20, n_heldout=5, seed=0)


def test_prepare_file_split_and_refuses_changed_file(tmp_path):
  rows = [{"unique_id": f"q{i}", "problem": f"p{i}", "answer": i} for i in range(10)]
  path = _write_jsonl(tmp_path / "src.jsonl", rows)
  workdir = str(tmp_path / "ws")
  prepare_lib.prepare(workdir, path, n_heldout=3, seed=5, fields=records.FieldMap(id="unique_id"))
  train, heldout = prepare_lib.read_problems(workdir, "train"), prepare_lib.read_problems(workdir, "heldout")
  assert len(train) == 7 and len(heldout) == 3
  assert sorted(p.id for p in train + heldout) == sorted(f"q{i}" for i in range(10))
  assert [p.id for p in train] == sorted((p.id for p in train), key=lambda s: int(s[1:]))  # file order kept
  old_sha = artifacts.sha256_file(path)
  _write_jsonl(path, rows[:9])
  new_sha = artifacts.sha256_file(path)
  with pytest.raises(artifacts.ArtifactError, match=f"the source changed: src.jsonl has sha256 {new_sha}, "
                     f"not the {old_sha} it was prepared from"):
    prepare_lib.prepare(workdir, path, n_heldout=3, seed=5, fields=records.FieldMap(id="unique_id"))
  with pytest.raises(ValueError, match=r"has 9 problems, fewer than n_heldout=3 \+ n_train=7"):
    prepare_lib.prepare(str(tmp_path / "ws2"), path, n_train=7, n_heldout=3)
  with pytest.raises(ValueError, match="n_train is required"):
    prepare_lib.prepare(str(tmp_path / "ws3"), "builtin:gsm_symbolic", n_heldout=3)


def test_read_problems_detects_tampering(tmp_path):
  prepare_lib.prepare(str(tmp_path), "builtin:easy_arithmetic", n_train=5, n_heldout=2)
  path = tmp_path / "problems" / "heldout.jsonl"
  path.write_text(path.read_text().replace('"answer": "', '"answer": "1'))
  assert len(prepare_lib.read_problems(str(tmp_path), "train")) == 5
  with pytest.raises(artifacts.ArtifactError, match="heldout.jsonl: sha256 is .* but the manifest says"):
    prepare_lib.read_problems(str(tmp_path), "heldout")
  with pytest.raises(artifacts.ArtifactError, match="heldout.jsonl: sha256"):
    prepare_lib.prepare(str(tmp_path), "builtin:easy_arithmetic", n_train=5, n_heldout=2)


@pytest.mark.parametrize("crash_at,survivors", [(10, []), (25, ["train.jsonl"])])
def test_crash_mid_write_leaves_no_partial_files(tmp_path, monkeypatch, crash_at, survivors):
  encode, calls = prepare_lib._encode, []

  def crashing_encode(problem):
    calls.append(problem)
    if len(calls) == crash_at:
      raise KeyboardInterrupt("killed")
    return encode(problem)

  monkeypatch.setattr(prepare_lib, "_encode", crashing_encode)
  with pytest.raises(KeyboardInterrupt):
    prepare_lib.prepare(str(tmp_path), "builtin:easy_arithmetic", n_train=20, n_heldout=10)
  directory = tmp_path / "problems"
  assert sorted(os.listdir(directory)) == survivors  # complete files only, no temporaries, no manifest
  with pytest.raises(artifacts.ArtifactError, match="manifest.json: missing"):
    prepare_lib.read_problems(str(tmp_path), "train")
  # A stale temporary from a SIGKILLed run is swept, and the rerun completes.
  (directory / ".train.jsonl.abc.tmp").write_text("partial")
  monkeypatch.setattr(prepare_lib, "_encode", encode)
  prepare_lib.prepare(str(tmp_path), "builtin:easy_arithmetic", n_train=20, n_heldout=10)
  assert sorted(os.listdir(directory)) == ["heldout.jsonl", "manifest.json", "train.jsonl"]
  assert len(prepare_lib.read_problems(str(tmp_path), "heldout")) == 10


def test_prepare_tool(tmp_path):
  cmd = [sys.executable, "-m", "paced_jax.tools.prepare", f"--workdir={tmp_path}",
         "--source=builtin:easy_arithmetic", "--n_train=12", "--n_heldout=4"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
  assert out.strip() == f"{tmp_path}/problems (written): train 12, heldout 4"
  bad = subprocess.run(cmd[:-1] + ["--n_heldout=5"], cwd=REPO, capture_output=True, text=True)
  assert bad.returncode == 2 and "field 'n_heldout' is 4 but this run expects 5" in bad.stderr


def test_teacher_context_solution_falls_back_to_the_answer_with_one_warning():
  cfg = PromptConfig(student_template="Q: {problem}", answer_only_template="Q: {problem} (answer {answer})",
                     solution_template="Q: {problem} (solution: {solution})")
  assert cfg == dataclasses.replace(PromptConfig(), student_template=cfg.student_template,
                                    answer_only_template=cfg.answer_only_template,
                                    solution_template=cfg.solution_template)  # 'solution' is the default
  with_solution = records.Problem(id="a", prompt="1+1", answer="2", solution="1+1 = 2", source="t")
  without = records.Problem(id="b", prompt="2+2", answer="4", solution=None, source="t")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert prompts.teacher_text(with_solution, cfg) == "Q: 1+1 (solution: 1+1 = 2)"
    assert not caught
    assert prompts.teacher_text(without, cfg) == "Q: 2+2 (answer 4)"
  assert [w.category for w in caught] == [prompts.NoSolutionWarning] and "answer_only" in str(caught[0].message)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")  # Python's default: once, not once per problem
    for p in (without, dataclasses.replace(without, id="c"), dataclasses.replace(without, id="d")):
      prompts.teacher_text(p, cfg)
  assert len(caught) == 1
  answer_only = dataclasses.replace(cfg, teacher_context="answer_only")
  none = dataclasses.replace(cfg, teacher_context="none")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert prompts.teacher_text(with_solution, answer_only) == "Q: 1+1 (answer 2)"
    assert prompts.teacher_text(with_solution, none) == "Q: 1+1"
