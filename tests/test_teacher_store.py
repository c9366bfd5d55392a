"""The teacher store: round trip, refusals with clear errors, resume after a kill, grain, the tool."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from paced_jax.config import TeacherSignalConfig
from paced_jax import mesh as mesh_lib
from paced_jax.model import hf_checkpoint
from paced_jax.teacher import build as teacher_build
from paced_jax.teacher import store as teacher_store
from paced_jax.artifacts import ArtifactError
from tiny_models import make_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALID = 96
# The scorer settings of test_teacher_scoring.py, so that its compiled scorer is reused.
SCORING = dict(k=8, problems_per_shard=3, batch_rows=2, row_length=24, chunk_size=5)


def store_config(k, problems_per_shard, batch_rows, row_length, chunk_size, logprob_dtype="float16", temperature=1.0):
  signal = TeacherSignalConfig(top_k=k, logprob_dtype=logprob_dtype, chunk_size=chunk_size, batch_size=batch_rows,
                               problems_per_shard=problems_per_shard)
  return teacher_build.StoreConfig(signal, temperature=temperature, row_length=row_length)
IDENTITY = dict(teacher_fingerprint="teacher-a", tokenizer_fingerprint="tok-a", vocab_size=VALID)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """((cfg, graphdef, params), mesh): a Qwen2 with 128 embedding rows for 96 tokens, one device."""
  directory = make_tiny_model("qwen2", str(tmp_path_factory.mktemp("teacher")), vocab_size=128)
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  return hf_checkpoint.load_model(directory, mesh), mesh


def items(count=7, seed=0):
  rng = np.random.default_rng(seed)
  out = [teacher_build.TeacherItem(f"p{i}", rng.integers(0, VALID, size=rng.integers(1, 6)).tolist(),
                                   rng.integers(0, VALID, size=rng.integers(1, 8)).tolist()) for i in range(count)]
  if count > 3:
    out[3] = out[3]._replace(response_ids=[])  # an empty response is stored as 0 tokens
  return out


def build(directory, teacher, data=None, **cfg):
  model, mesh = teacher
  cfg = store_config(**dict(SCORING, **cfg))
  return teacher_build.build_store(str(directory), data or items(), teacher=model, mesh=mesh, cfg=cfg,
                                   progress=False, **IDENTITY)


@pytest.fixture(scope="module")
def store_dir(teacher, tmp_path_factory):
  directory = tmp_path_factory.mktemp("store") / "teacher"
  build(directory, teacher)
  return directory


def test_layout_and_random_access(store_dir):
  assert sorted(os.listdir(store_dir)) == ["index.jsonl", "manifest.json", "shard-00000.bin", "shard-00001.bin",
                                           "shard-00002.bin"]
  store = teacher_store.TeacherStore(str(store_dir), expect={**IDENTITY, "k": 8})
  assert len(store) == 7 and store.ids == [f"p{i}" for i in range(7)]
  data = items()
  for pid, _, response in reversed(data):  # any order
    rec = store.get(pid, response_ids=response)
    n = len(response)
    assert rec["ids"].shape == (n, 8) and rec["ids"].dtype == np.int32
    assert rec["logprobs"].dtype == teacher_store.LOGPROB_DTYPES["float16"] and rec["logprobs"].shape == (n, 8)
    assert rec["tail"].shape == rec["target_logprob"].shape == (n,)
  counts = store.verify()
  assert counts == {"problems": 7, "tokens": sum(len(r) for _, _, r in data), "shards": 3}
  with pytest.raises(KeyError, match="'nope' is not in the teacher store"):
    store["nope"]
  with pytest.raises(ArtifactError, match="computed on other response tokens"):
    store.get("p0", response_ids=[1, 2, 3])


def test_grain_data_source(store_dir):
  store = teacher_store.TeacherStore(str(store_dir))
  source = pickle.loads(pickle.dumps(store.data_source()))  # grain workers get a pickled copy
  assert isinstance(source, grain.sources.RandomAccessDataSource) and len(source) == 7
  ds = grain.MapDataset.source(source)
  rec = ds[4]
  assert rec["id"] == "p4"
  np.testing.assert_array_equal(rec["ids"], store["p4"]["ids"])


@pytest.mark.parametrize("dtype,rel", [("bfloat16", 2.0**-8), ("float16", 2.0**-11)])
def test_k_equals_vocab_store_is_the_dense_distribution(teacher, tmp_path, dtype, rel):
  from paced_jax.model import scoring as teacher_scoring
  (_, graphdef, params), mesh = teacher
  data = items(4, seed=1)
  build(tmp_path, teacher, data, k=VALID, logprob_dtype=dtype, problems_per_shard=4)
  store = teacher_store.TeacherStore(str(tmp_path), expect={**IDENTITY, "k": VALID})
  # The reference: the same signal in float32, before storage rounding.
  seqs = [(p, r) for _, p, r in data]
  ref = [r for batch in teacher_scoring.score_batches(graphdef, params, mesh, seqs, k=VALID, valid_vocab=VALID,
                                                      length=24, batch_rows=2, chunk_size=5) for r in batch]
  for (pid, _, response), (_, want) in zip(data, ref):
    got = store[pid]
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_allclose(got["logprobs"].astype(np.float32), want["logprobs"], rtol=rel, atol=0)
    np.testing.assert_array_equal(got["tail"], 0.0)
    probs = np.exp(got["logprobs"].astype(np.float64)).sum(-1)
    np.testing.assert_allclose(probs + got["tail"], 1.0, atol=VALID * rel)  # storage rounding only
    np.testing.assert_array_equal(got["target_logprob"], want["target_logprob"])


def copy(store_dir, tmp_path):
  return str(shutil.copytree(store_dir, tmp_path / "copy"))


def test_corrupted_shard_is_refused(store_dir, tmp_path):
  directory = copy(store_dir, tmp_path)
  path = os.path.join(directory, "shard-00001.bin")
  with open(path, "r+b") as f:
    f.seek(17)
    byte = f.read(1)
    f.seek(17)
    f.write(bytes([byte[0] ^ 0x01]))
  store = teacher_store.TeacherStore(directory)
  store["p0"]  # shard 0 is fine
  corrupted = r"shard-00001.bin: sha256 is \w+ but the manifest says \w+; the shard is corrupted"
  with pytest.raises(ArtifactError, match=corrupted):
    store["p4"]
  with pytest.raises(ArtifactError, match="shard-00001.bin: sha256"):
    teacher_store.TeacherStore(directory, verify="none").verify()
  with pytest.raises(ArtifactError, match="shard-00001.bin: sha256"):
    teacher_store.TeacherStore(directory, verify="open")
  result = subprocess.run([sys.executable, "-m", "paced_jax.tools.teacher", "verify", f"--dir={directory}"],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2 and "shard-00001.bin: sha256" in result.stderr


@pytest.mark.parametrize("name,cut,match", [
    ("index.jsonl", 10, "index.jsonl: 6 complete entries and a cut-off line, but the manifest says 7; the index is "
                        "truncated"),
    ("index.jsonl", 1, "index.jsonl: 6 complete entries and a cut-off line"),  # only its last newline gone
    ("index.jsonl", None, "index.jsonl: 6 complete entries, but the manifest says 7"),  # its last line gone
    ("shard-00002.bin", 5, r"shard-00002.bin: \d+ bytes but the manifest says \d+ bytes; the shard is truncated"),
])
def test_truncation_is_refused(store_dir, tmp_path, name, cut, match):
  directory = copy(store_dir, tmp_path)
  path = os.path.join(directory, name)
  if cut is None:
    cut = len(open(path, "rb").read().split(b"\n")[-2]) + 1
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - cut)
  with pytest.raises(ArtifactError, match=match):
    teacher_store.TeacherStore(directory)


def test_changed_index_is_refused(store_dir, tmp_path):
  directory = copy(store_dir, tmp_path)
  path = os.path.join(directory, "index.jsonl")
  text = open(path).read()
  open(path, "w").write(text.replace('"p1"', '"p9"'))
  with pytest.raises(ArtifactError, match=r"index.jsonl: sha256 is \w+ but the manifest says \w+; the index was changed"):
    teacher_store.TeacherStore(directory)


@pytest.mark.parametrize("field,value", [("teacher_fingerprint", "teacher-b"), ("k", 16), ("vocab_size", 128),
                                         ("tokenizer_fingerprint", "tok-b")])
def test_store_for_another_setting_is_refused(store_dir, field, value):
  expect = {**IDENTITY, "k": 8, field: value}
  got = IDENTITY.get(field, 8)
  with pytest.raises(ArtifactError, match=f"field '{field}' is {got!r} but this run expects {value!r}"):
    teacher_store.TeacherStore(str(store_dir), expect=expect)


def test_missing_manifest_says_the_build_did_not_finish(tmp_path):
  with pytest.raises(ArtifactError, match="absent or its build did not finish"):
    teacher_store.TeacherStore(str(tmp_path))


def test_killed_build_resumes_byte_identical(teacher, store_dir, tmp_path):
  directory = tmp_path / "teacher"

  def kill_in_shard_1(done):  # after the first batch of shard 1 (p3..p5), before it is finished
    if (directory / "shard-00000.bin").exists():
      raise KeyboardInterrupt(f"killed after {done} batches")

  model, mesh = teacher
  cfg = store_config(**SCORING)
  with pytest.raises(KeyboardInterrupt):
    teacher_build.build_store(str(directory), items(), teacher=model, mesh=mesh, cfg=cfg, progress=False,
                              after_batch=kill_in_shard_1, **IDENTITY)
  assert sorted(os.listdir(directory)) == ["build.json", "shard-00000.bin"]  # no temporaries, no manifest
  with pytest.raises(ArtifactError, match="did not finish"):
    teacher_store.TeacherStore(str(directory))
  # Another setting cannot finish this build.
  with pytest.raises(ArtifactError, match="build.json: field 'k' is 8 but this run expects 4"):
    build(directory, teacher, k=4)
  (directory / ".shard-00001.bin.abc.tmp").write_bytes(b"partial")  # as a SIGKILLed run leaves it
  kept = (directory / "shard-00000.bin").stat()
  teacher_build.build_store(str(directory), items(), teacher=model, mesh=mesh, cfg=cfg, progress=False, **IDENTITY)
  again = (directory / "shard-00000.bin").stat()
  assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # finished work is not redone
  assert sorted(os.listdir(directory)) == sorted(os.listdir(store_dir))
  for name in os.listdir(store_dir):
    assert (directory / name).read_bytes() == (store_dir / name).read_bytes(), name
  # A finished store is reused as is; one for other inputs is refused.
  assert build(directory, teacher)["counts"]["problems"] == 7
  with pytest.raises(ArtifactError, match="field 'inputs_fingerprint'"):
    build(directory, teacher, items(seed=5))


def _tiny_tokenizer(directory):
  import tokenizers
  import transformers
  vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|im_end|>": 2, **{f"w{i}": i for i in range(3, VALID)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
  fast.save_pretrained(directory)
  assert len(fast) == VALID


def test_tool_build_and_verify(tmp_path):
  # Llama: transformers 5 gives a qwen2 directory its Qwen2Tokenizer, whatever tokenizer.json says.
  model_dir = make_tiny_model("llama3", str(tmp_path / "teacher"), vocab_size=128)
  _tiny_tokenizer(model_dir)
  responses = tmp_path / "responses.jsonl"
  rows = [{"id": "a", "teacher_prompt": "w5 w6 w7", "response_ids": [8, 9, 2]},
          {"id": 7, "teacher_prompt_ids": [10, 11], "response_ids": [12, 2]}]
  responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "store"
  base = [sys.executable, "-m", "paced_jax.tools.teacher"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  built = subprocess.run(base + ["build", f"--dir={out}", f"--teacher={model_dir}", f"--responses={responses}",
                                 "--k=4", "--batch_rows=1", "--chunk_size=4"],
                         cwd=REPO, capture_output=True, text=True, env=env)
  assert built.returncode == 0, built.stderr
  assert built.stdout.strip() == f"{out}: problems 2, tokens 5, shards 1"
  fingerprint = hf_checkpoint.model_fingerprint(model_dir)
  store = teacher_store.TeacherStore(str(out), expect={"k": 4, "vocab_size": VALID, "teacher_fingerprint": fingerprint})
  assert store.ids == ["a", "7"] and store["a"]["ids"].shape == (3, 4)
  assert store.manifest["teacher_vocab_rows"] == 128
  verified = subprocess.run(base + ["verify", f"--dir={out}"], cwd=REPO, capture_output=True, text=True, env=env)
  assert verified.returncode == 0, verified.stderr
  assert "ok; k 4, vocab_size 96, logprob_dtype float16, problems 2, tokens 5, shards 1" in verified.stdout


def test_read_items_errors(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text('{"id": "a", "teacher_prompt_ids": [1], "response_ids": [2]}\n{"id": "b", "response_ids": [1]}\n')
  with pytest.raises(ValueError, match="r.jsonl: line 2: needs 'teacher_prompt_ids'"):
    teacher_build.read_items(str(path))
  path.write_text('{"id": "a", "teacher_prompt": "w1", "response_ids": [2]}\n')
  with pytest.raises(ValueError, match="line 1: 'teacher_prompt' is text, but no tokenizer"):
    teacher_build.read_items(str(path))
  path.write_text('{"id": "a", "teacher_prompt_ids": [1], "response_ids": [2.5]}\n')
  with pytest.raises(ValueError, match="line 1: field 'response_ids' must be a list of integers"):
    teacher_build.read_items(str(path))


def test_build_refuses_bad_inputs(teacher, tmp_path):
  good = items(2)
  with pytest.raises(ValueError, match="problem id 'p0' appears twice"):
    build(tmp_path, teacher, good + [good[0]])
  with pytest.raises(ValueError, match=r"problem 'p1': token ids must lie in \[0, 96\)"):
    build(tmp_path, teacher, [good[0], good[1]._replace(response_ids=[100])])
  with pytest.raises(ValueError, match="do not fit row_length 4"):
    build(tmp_path, teacher, good, row_length=4)
