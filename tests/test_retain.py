"""Retain set: file formats and errors, the arith_mc generator, the choice scorer, forgetting."""

import csv
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flax import nnx

from paced_jax import artifacts, config_dict
from paced_jax.evaluation import retain
from paced_jax.evaluation import retain_sets
from stage_fixtures import load_config_file, load_student, tiny_experiment

ROWS = [{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo", "Bern"], "answer": 1, "subject": "geo"}]


def test_forgetting_arithmetic():
  f = retain.forgetting(0.8, 0.6)
  assert f["points"] == pytest.approx(20.0) and f["relative_drop"] == pytest.approx(0.25)
  assert (f["before"], f["after"]) == (0.8, 0.6)
  assert retain.forgetting(0.5, 0.55)["points"] == pytest.approx(-5.0)  # improved: negative drop
  assert retain.forgetting(0.0, 0.0)["relative_drop"] is None


def test_arith_mc_is_deterministic_and_correct():
  qs = retain_sets.arith_mc(50, seed=3)
  assert qs == retain_sets.arith_mc(50, seed=3) and qs != retain_sets.arith_mc(50, seed=4)
  assert len({q.id for q in qs}) == 50
  for q in qs:
    a, b = map(int, q.id.split("/")[1].split("x"))
    assert q.choices[q.answer] == str(a * b) and len(set(q.choices)) == 4
    assert all(int(c) > 0 for c in q.choices)
  with pytest.raises(ValueError, match="n must be in 1..121"):
    retain_sets.arith_mc(200)


def test_file_formats_agree(tmp_path):
  jsonl = tmp_path / "r.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  parquet = tmp_path / "r.parquet"
  pq.write_table(pa.Table.from_pylist(ROWS), parquet)
  with open(tmp_path / "r.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["question", "A", "B", "C", "D", "answer", "subject"])
    for r in ROWS:
      w.writerow([r["question"], *r["choices"], "ABCD"[r["answer"]], r.get("subject", "")])
  with open(tmp_path / "mmlu_test.csv", "w", newline="") as f:  # MMLU's own layout: no header
    csv.writer(f).writerows([[r["question"], *r["choices"], "ABCD"[r["answer"]]] for r in ROWS])
  strip = lambda qs: [(q.question, q.choices, q.answer) for q in qs]
  want = strip(retain_sets.load_retain_file(str(jsonl)))
  assert want == [("2+2?", ("3", "4", "5", "6"), 1), ("Capital of France?", ("Rome", "Paris", "Oslo", "Bern"), 1)]
  for name in ("r.parquet", "r.csv", "mmlu_test.csv"):
    assert strip(retain_sets.load_retain_file(str(tmp_path / name))) == want, name
  qs, identity, fmt = retain_sets.load_retain_set(f"{jsonl}:n=1")
  assert len(qs) == 1 and identity["n"] == 1 and identity["sha256"] == artifacts.sha256_file(str(jsonl))
  assert fmt == "letter" and retain_sets.load_retain_set("builtin:arith_mc:n=3,format=letter")[2] == "letter"
  assert retain_sets.load_retain_set("builtin:arith_mc:n=3")[2] == "cloze"


@pytest.mark.parametrize("name, text, match", [
    ("a.jsonl", '{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 0}\n{"question": "q", "choices": ["a", "b"]}\n',
     r"a.jsonl: line 2: field 'answer'"),
    ("b.jsonl", '{"question": "q", "choices": ["a", "b", "c", "d"], "answer": "E"}\n', r"b.jsonl: line 1: field 'answer'.*'E'"),
    ("c.jsonl", '{"question": "q", "A": "a", "B": "b", "answer": 0}\n', r"c.jsonl: line 1: needs a 'choices' list or columns A, B, C, D"),
    ("d.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": \n', r"d.jsonl: line 2: invalid JSON"),
    ("e.csv", "question,A,B,C,D,answer\nq,a,b,c,d,A\nq,a,b,c,B\n", r"e.csv: line 3: expected 6 columns"),
    ("f.txt", "", r"f.txt: unsupported file type"),
])
def test_bad_rows_name_the_line(tmp_path, name, text, match):
  (tmp_path / name).write_text(text)
  with pytest.raises(retain_sets.RetainFileError, match=match):
    retain_sets.load_retain_file(str(tmp_path / name))


@jax.jit
def _forward_logits(graphdef, params, tokens_1T, segments_1T):
  decoder = nnx.merge(graphdef, params)
  T = tokens_1T.shape[1]
  hidden = decoder(tokens_1T, jnp.arange(T, dtype=jnp.int32)[None], segments_1T)
  return decoder.logits(hidden)[0]


def brute_force_loglik(model, context, continuation, width=256):
  """Each (context + choice) alone, unpacked: sum of log p(choice token | prefix) in float64."""
  seq = list(context) + list(continuation)
  tokens = np.zeros((1, width), np.int32)
  tokens[0, :len(seq)] = seq
  segments = (np.arange(width) < len(seq)).astype(np.int32)[None]  # right padding: causal, so harmless
  logits = np.asarray(_forward_logits(model.graphdef, model.params, tokens, segments), np.float64)
  logits[:, model.valid_vocab:] = -np.inf  # padded embedding rows are no tokens
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  P = len(context)
  return sum(logp[P - 1 + j, tok] for j, tok in enumerate(continuation))


def test_scorer_matches_brute_force(tmp_path):
  cfg = tiny_experiment(str(tmp_path))
  student = load_student(cfg)  # 8 devices: rows are split over the batch axes
  assert student.valid_vocab < student.cfg.vocab_size  # the masking matters
  questions = retain_sets.arith_mc(3, seed=1) + [retain_sets.MCQuestion("long", "Pick the longest.", ("a", "bb b", "c c c c c"), 2)]
  sequences = retain.choice_sequences(student.tokenizer, questions, cfg.prompts, retain_sets.FORMATS["letter"])
  assert len(sequences) == 3 * 4 + 3
  totals, counts = retain.sequence_logprobs(student, sequences, tokens_per_batch=256, progress=False)  # several batches
  want = np.asarray([brute_force_loglik(student, c, r) for c, r in sequences])
  np.testing.assert_allclose(totals, want, rtol=1e-4, atol=1e-4)
  assert counts.tolist() == [len(r) for _, r in sequences]
  records = retain.score(student, questions, cfg.prompts, retain_sets.FORMATS["letter"], progress=False)
  assert [r["predicted"] for r in records[:3]] == [int(np.argmax(want[4 * i:4 * i + 4])) for i in range(3)]
  assert records[3]["logliks"] == pytest.approx(want[12:].tolist(), rel=1e-4, abs=1e-4)


def test_run_writes_summary_and_forgetting(tmp_path, monkeypatch):
  c = load_config_file("tiny.py")
  c.workdir = str(tmp_path)
  c.eval.retain_set = "builtin:arith_mc:n=4"
  cfg = config_dict.experiment(c)
  right = {"initial": 4, "after": 3}  # questions answered right by each fake model

  def fake_score(model, questions, prompts, fmt, *, params=None, progress=True):
    return [{"id": q.id, "answer": q.answer, "predicted": q.answer if i < right[model.tag] else (q.answer + 1) % 4,
             "predicted_norm": q.answer, "logliks": [0.0] * 4, "tokens": [1] * 4} for i, q in enumerate(questions)]

  monkeypatch.setattr(retain, "score", fake_score)
  base = os.path.join(str(tmp_path), "eval", "initial")
  for tag in ("initial", "after"):
    summary = retain.run(cfg, types.SimpleNamespace(tag=tag), directory=os.path.join(str(tmp_path), "eval", tag),
                         tag=tag, fingerprint="fp-" + tag, baseline_directory=base)
  assert summary["accuracy"] == 0.75 and summary["accuracy_norm"] == 1.0 and summary["chance"] == 0.25
  assert summary["format"] == "cloze" and summary["continuation"] == "The answer is {choice}."
  assert summary["forgetting"] == {"before": 1.0, "after": 0.75, "points": 25.0, "relative_drop": 0.25,
                                   "baseline_tag": "initial"}
  on_disk = artifacts.read_json(os.path.join(str(tmp_path), "eval", "after", retain.SUMMARY))
  assert on_disk == summary and on_disk["n_questions"] == 4
  assert artifacts.read_json(os.path.join(base, retain.SUMMARY))["forgetting"] is None
  monkeypatch.setattr(retain, "score", None)  # reused: nothing is scored again
  again = retain.run(cfg, types.SimpleNamespace(tag="after"), directory=os.path.join(str(tmp_path), "eval", "after"),
                     tag="after", fingerprint="fp-after", baseline_directory=base)
  assert again == summary
