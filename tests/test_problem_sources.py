"""Published problem-file layouts (hub column names and nesting), globs, shards and datasets directories."""

import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paced_jax import artifacts
from paced_jax.evaluation import benchmarks
from paced_jax.problems import prepare as prepare_lib
from paced_jax.problems import records, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DAPO_INSTRUCTION = ("Solve the following math problem step by step. The last line of your response should be of the "
                    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
# The verl schema of BytedTsinghua-SIA/DAPO-Math-17k.
DAPO_SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
    ("extra_info", pa.struct([("index", pa.string())])),
])


def _dapo_row(index: str, question: str, answer: str) -> dict:
  return {"data_source": "math_dapo", "prompt": [{"content": DAPO_INSTRUCTION + question, "role": "user"}],
          "ability": "MATH", "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
          "extra_info": {"index": index}}


def _summary(problems):
  return [(p.id, p.prompt, p.answer, p.solution, p.level) for p in problems]


def test_math500_jsonl(tmp_path):
  path = tmp_path / "test.jsonl"
  path.write_text(json.dumps({"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2",
                              "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}) + "\n")
  got = records.load_problem_file(str(path), records.FIELD_PRESETS["math500"])
  assert _summary(got) == [("test/algebra/1.json", "What is $1+1$?", "2", "It is $\\boxed{2}$.", 1)]


def test_aime_2024_and_2025_parquet(tmp_path):
  pq.write_table(pa.table({"ID": ["2024-I-1"], "Problem": ["Find x."], "Solution": ["So 204."],
                           "Answer": pa.array([204], pa.int64())}), tmp_path / "aime_2024_problems.parquet")
  got = records.load_problem_file(str(tmp_path / "aime_2024_problems.parquet"), records.FIELD_PRESETS["aime2024"])
  assert _summary(got) == [("2024-I-1", "Find x.", "204", "So 204.", None)]
  (tmp_path / "aime25" / "data").mkdir(parents=True)
  pq.write_table(pa.table({"id": pa.array([0, 1], pa.int64()), "problem": ["Find y.", "Find z."],
                           "solution": ["y is 70.", "z is 588."], "answer": ["70", "588"],
                           "url": ["u0", "u1"], "year": ["2025", "2025"]}),
                 tmp_path / "aime25" / "data" / "train-00000-of-00001.parquet")
  got = records.load_problem_file(str(tmp_path / "aime25" / "data" / "train-*.parquet"), records.FIELD_PRESETS["aime2025"])
  assert _summary(got) == [("0", "Find y.", "70", "y is 70.", None), ("1", "Find z.", "588", "z is 588.", None)]


def test_dapo_verl_parquet_shards(tmp_path):
  shards = [[_dapo_row("a1", "What is 2+3?", "5")], [_dapo_row("b2", "What is 7*6?", "42")]]
  for i, rows in enumerate(shards):
    pq.write_table(pa.Table.from_pylist(rows, DAPO_SCHEMA), tmp_path / f"train-{i:05d}-of-00002.parquet")
  got = records.load_problem_file(str(tmp_path / "train-0000*-of-00002.parquet"), records.FIELD_PRESETS["dapo"])
  assert _summary(got) == [("a1", DAPO_INSTRUCTION + "What is 2+3?", "5", None, None),
                           ("b2", DAPO_INSTRUCTION + "What is 7*6?", "42", None, None)]
  # A benchmark over the glob: identified by the shards' content.
  spec = f"{tmp_path}/train-*.parquet:fields=dapo,name=dapo"
  before = benchmarks.load_benchmark(spec, str(tmp_path))
  assert before.name == "dapo" and [p.answer for p in before.problems] == ["5", "42"]
  pq.write_table(pa.Table.from_pylist([_dapo_row("b2", "What is 7*6?", "43")], DAPO_SCHEMA),
                 tmp_path / "train-00001-of-00002.parquet")
  assert benchmarks.load_benchmark(spec, str(tmp_path)).identity["sha256"] != before.identity["sha256"]
  # A lost shard is an error, not a smaller data set.
  (tmp_path / "train-00000-of-00002.parquet").unlink()
  with pytest.raises(records.ProblemFileError, match=r"matches 1 of 2 shards \(missing e.g. 00000\)"):
    records.load_problem_file(str(tmp_path / "train-*.parquet"), records.FIELD_PRESETS["dapo"])


def test_nested_and_chat_errors_name_file_row_and_field(tmp_path):
  bad_answer = _dapo_row("a", "q", "1")
  bad_answer["reward_model"] = {"ground_truth": None, "style": "rule"}
  no_user = _dapo_row("b", "q", "1")
  no_user["prompt"] = [{"content": "be brief", "role": "system"}]
  for name, row, match in [("x.parquet", bad_answer, r"x.parquet: row 0: field 'reward_model.ground_truth': missing"),
                           ("y.parquet", no_user, r"y.parquet: row 0: field 'prompt': chat messages without a user turn")]:
    pq.write_table(pa.Table.from_pylist([row], DAPO_SCHEMA), tmp_path / name)
    with pytest.raises(records.ProblemFileError, match=match):
      records.load_problem_file(str(tmp_path / name), records.FIELD_PRESETS["dapo"])


def test_dapo_processed_datasets_directory(tmp_path):
  datasets = pytest.importorskip("datasets")
  rows = [{"prompt": "What is 2+3?", "solution": "5", "data_source": "math_dapo",
           "source_prompt": [{"content": DAPO_INSTRUCTION + "What is 2+3?", "role": "user"}], "ability": "MATH",
           "reward_model": {"ground_truth": "5", "style": "rule-lighteval/MATH_v2"}, "extra_info": {"index": "a1"}}]
  directory = tmp_path / "dapo_processed"
  datasets.Dataset.from_list(rows).save_to_disk(str(directory))
  got = records.load_problem_file(str(directory), records.FIELD_PRESETS["dapo_processed"])
  assert _summary(got) == [("a1", "What is 2+3?", "5", None, None)]
  assert sources.source_stem(str(directory)) == "dapo_processed"
  datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
  with pytest.raises(records.ProblemFileError, match=re.escape("a DatasetDict with splits train; give one split's")):
    records.load_problem_file(str(tmp_path / "dict"), records.FIELD_PRESETS["dapo_processed"])
  (tmp_path / "plain").mkdir()
  with pytest.raises(records.ProblemFileError, match="not one written by datasets' save_to_disk"):
    records.load_problem_file(str(tmp_path / "plain"))


def test_gsm8k_answer_after_marker(tmp_path):
  pq.write_table(pa.table({"question": ["Tom has 3 apples and buys 4. How many?"],
                           "answer": ["Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"]}),
                 tmp_path / "test-00000-of-00001.parquet")
  got = records.load_problem_file(str(tmp_path / "test-00000-of-00001.parquet"), records.FIELD_PRESETS["gsm8k"])
  assert _summary(got) == [("test-00000-of-00001-0", "Tom has 3 apples and buys 4. How many?", "7",
                            "Tom has 3 + 4 = <<3+4=7>>7 apples.", None)]
  pq.write_table(pa.table({"question": ["q"], "answer": ["no marker"]}), tmp_path / "bad.parquet")
  match = r"bad.parquet: row 0: field 'answer': expected text with the answer after '####'"
  with pytest.raises(records.ProblemFileError, match=match):
    records.load_problem_file(str(tmp_path / "bad.parquet"), records.FIELD_PRESETS["gsm8k"])


# The prepare stage over globs and datasets directories

def test_prepare_dapo_shards_end_to_end_and_an_edited_shard_is_named(tmp_path):
  questions = [(f"i{k}", f"What is {k}+{k}?", str(2 * k)) for k in range(6)]
  for shard in range(3):
    rows = [_dapo_row(*q) for q in questions[2 * shard:2 * shard + 2]]
    pq.write_table(pa.Table.from_pylist(rows, DAPO_SCHEMA), tmp_path / f"train-{shard:05d}-of-00003.parquet")
  workdir, glob = str(tmp_path / "ws"), str(tmp_path / "train-*.parquet")
  cmd = [sys.executable, "-m", "paced_jax.tools.prepare", f"--workdir={workdir}", f"--source={glob}",
         "--fields=dapo", "--n_heldout=2", "--seed=3"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == f"{workdir}/problems (written): train 4, heldout 2"
  got = prepare_lib.read_problems(workdir, "train") + prepare_lib.read_problems(workdir, "heldout")
  assert sorted((p.id, p.prompt, p.answer) for p in got) == [(i, DAPO_INSTRUCTION + q, a) for i, q, a in questions]
  files = artifacts.read_manifest(os.path.join(workdir, "problems"), "problems")["config"]["files"]
  assert files == {f"train-{s:05d}-of-00003.parquet": artifacts.sha256_file(tmp_path / f"train-{s:05d}-of-00003.parquet")
                   for s in range(3)}
  assert subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout.strip().endswith("(reused): train 4, heldout 2")
  # One shard edited: its answer changes, so the prepared directory must not be reused, and the shard is named.
  pq.write_table(pa.Table.from_pylist([_dapo_row("i2", "What is 2+2?", "5"), _dapo_row(*questions[3])], DAPO_SCHEMA),
                 tmp_path / "train-00001-of-00003.parquet")
  new_sha = artifacts.sha256_file(tmp_path / "train-00001-of-00003.parquet")
  assert new_sha != files["train-00001-of-00003.parquet"]
  bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stdout == ""
  assert f"the source changed: train-00001-of-00003.parquet has sha256 {new_sha}, not the " in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1


def test_prepare_datasets_directory_end_to_end_and_a_new_file_is_named(tmp_path):
  datasets = pytest.importorskip("datasets")
  rows = [{"prompt": f"What is {k}*3?", "solution": str(3 * k), "extra_info": {"index": f"d{k}"}} for k in range(5)]
  directory = tmp_path / "dapo_processed"
  datasets.Dataset.from_list(rows).save_to_disk(str(directory))
  workdir = str(tmp_path / "ws")
  fields = records.FIELD_PRESETS["dapo_processed"]
  prepare_lib.prepare(workdir, str(directory), n_train=3, n_heldout=2, seed=1, fields=fields)
  got = prepare_lib.read_problems(workdir, "train") + prepare_lib.read_problems(workdir, "heldout")
  assert sorted((p.id, p.prompt, p.answer) for p in got) == [(f"d{k}", f"What is {k}*3?", str(3 * k)) for k in range(5)]
  # A dataset saved again with one more row is different data, even though the directory's name is the same.
  datasets.Dataset.from_list(rows + [{"prompt": "What is 9*3?", "solution": "27", "extra_info": {"index": "d9"}}]
                             ).save_to_disk(str(tmp_path / "again"))
  shutil.rmtree(directory)
  shutil.copytree(tmp_path / "again", directory)
  with pytest.raises(artifacts.ArtifactError, match=r"the source changed: data-00000-of-00001.arrow has sha256"):
    prepare_lib.prepare(workdir, str(directory), n_train=3, n_heldout=2, seed=1, fields=fields)


def test_prepare_names_the_file_with_a_bad_byte_in_a_glob(tmp_path):
  (tmp_path / "a.jsonl").write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n")
  (tmp_path / "b.jsonl").write_bytes(b'{"problem": "caf\xe9", "answer": "3"}\n')
  with pytest.raises(records.ProblemFileError, match=f"{tmp_path / 'b.jsonl'}: line 1: byte .* is not UTF-8"):
    prepare_lib.prepare(str(tmp_path / "w"), str(tmp_path / "*.jsonl"), n_heldout=0,
                        fields=records.FieldMap(id=None))


def test_config_problems_fields_layout_with_field_overrides():
  from paced_jax.config import ConfigError, ProblemsConfig
  assert prepare_lib.field_map(ProblemsConfig()) == records.FieldMap()
  assert prepare_lib.field_map(ProblemsConfig(fields="gsm8k")) == records.FieldMap(
      id=None, prompt="question", answer="answer", solution="answer", level=None, answer_after="####")
  assert prepare_lib.field_map(ProblemsConfig(fields="dapo", field_id="")) == records.FieldMap(
      id=None, prompt="prompt", answer="reward_model.ground_truth", solution=None, level=None)
  assert prepare_lib.field_map(ProblemsConfig(field_id="ID", field_solution="")) == records.FieldMap(
      id="ID", solution=None)
  with pytest.raises(ConfigError, match="config.problems.fields is 'dapo17k'; expected one of default, math500"):
    prepare_lib.field_map(ProblemsConfig(fields="dapo17k"))
