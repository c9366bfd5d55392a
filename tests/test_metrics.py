"""The metrics writer: a tiny training run logs to train.jsonl, TensorBoard event files and an offline W&B run."""

import collections
import glob
import json
import os
import shutil
import struct
import time

import pytest
from tensorboardX.proto import event_pb2

from paced_jax import workspace
from paced_jax.training import metrics, trainer
import tiny_workspace
from stage_fixtures import tiny_experiment


def _tb_events(directory):
  """Every event of the TFRecord files under `directory` (record = u64 length, u32 crc, data, u32 crc)."""
  paths = sorted(glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True))
  return [e for path in paths for e in _tb_events_of(path)]


def _tb_counts(directory):
  """{(tag, step): how many values} over every event file under `directory`."""
  return collections.Counter((v.tag, e.step) for e in _tb_events(directory) for v in e.summary.value)


def _tb_events_of(path):
  data, events, i = open(path, "rb").read(), [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
    i += 12 + n + 4
  return events


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  pytest.importorskip("wandb")
  tmp_path = tmp_path_factory.mktemp("metrics")
  prepared = tiny_workspace.prepared(tmp_path_factory)
  workdir = str(tmp_path / "run")
  shutil.copytree(prepared[0], workdir)
  with pytest.MonkeyPatch.context() as env:
    env.setenv("WANDB_MODE", "offline")
    env.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    env.setenv("WANDB_SILENT", "true")
    cfg = tiny_experiment(workdir, track="distill", train__steps=2, train__checkpoint_every=2,
                          wandb__project="paced-test")
    trainer.train(cfg, prepared[1], prepared[1], progress=False)
  lines = open(workspace.train_metrics_file(workdir)).read().splitlines()
  return workdir, [json.loads(line) for line in lines], lines, str(tmp_path / "wandb_dir")


def test_train_jsonl_keeps_its_format(trained):
  _, records, lines, _ = trained
  assert [r["step"] for r in records] == [1, 2]
  # One json.dumps line per step, "step" first, as train.jsonl has always been written.
  assert lines == [json.dumps(r) for r in records]
  assert list(records[0])[:3] == ["step", "stage", "divergence"]


def test_tensorboard_has_the_train_scalars_histogram_and_settings(trained):
  workdir, records, _, _ = trained
  events = _tb_events(workspace.tensorboard_dir(workdir))
  scalars = {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value if v.HasField("simple_value")}
  for r in records:
    assert scalars[("train/loss", r["step"])] == pytest.approx(r["loss"], rel=1e-6)
    assert scalars[("train/lr", r["step"])] == pytest.approx(r["lr"], rel=1e-6)
  tags = {v.tag for e in events for v in e.summary.value}
  assert "pass_rate/round_0" in tags and any(t.startswith("hparams") for t in tags)
  (histo,) = [v.histo for e in events for v in e.summary.value if v.tag == "pass_rate/round_0"]
  manifest = json.load(open(os.path.join(workspace.pass_rates_dir(workdir, 0), "manifest.json")))
  assert list(histo.bucket) == manifest["histogram"] and histo.num == sum(manifest["histogram"])


def _wandb_records(path, until=lambda records: True, wait_s: float = 60.0):
  """The protobuf records of an offline run's .wandb file (a LevelDB-style log: 7-byte file header, 32 KiB
  blocks of chunks with a 7-byte header: crc32 u32, length u16, type u8 = full 1 / first 2 / middle 3 / last 4).

  W&B's service process writes the file after `run.finish()` returns (seen on a loaded machine: the header
  only): read again until `until(records)` holds, for at most `wait_s` (a wait for a writer, not a timing check)."""
  deadline = time.monotonic() + wait_s
  while not until(records := _read_wandb_records(path)) and time.monotonic() < deadline:
    time.sleep(0.5)
  return records


def _read_wandb_records(path):
  from wandb.proto import wandb_internal_pb2
  data = open(path, "rb").read()
  assert struct.unpack("<4sH", data[:6]) == (b":W&B", 0xBEE1)
  records, chunk, i = [], b"", 7
  while i + 7 <= len(data):
    left = 32768 - i % 32768
    n, kind = struct.unpack("<HB", data[i + 4:i + 7]) if left >= 7 else (0, 0)
    if kind == 0:  # block trailer padding
      i += left
      continue
    chunk += data[i + 7:i + 7 + n]
    i += 7 + n
    if kind in (1, 4):
      records.append(wandb_internal_pb2.Record.FromString(chunk))
      chunk = b""
  return records


def test_offline_wandb_run_has_the_train_loss_histogram_and_settings(trained):
  workdir, records, _, wandb_dir = trained
  (path,) = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb"))
  rows, config = [], {}
  for r in _wandb_records(path):
    if r.WhichOneof("record_type") == "history":
      rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item})
    elif r.WhichOneof("record_type") == "config":
      config.update({u.key: json.loads(u.value_json) for u in r.config.update})
  losses = {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row}
  assert losses == pytest.approx({r["step"]: r["loss"] for r in records}, rel=1e-6)
  manifest = json.load(open(os.path.join(workspace.pass_rates_dir(workdir, 0), "manifest.json")))
  (histogram,) = [row["pass_rate/round_0/values"] for row in rows if "pass_rate/round_0/values" in row]
  assert histogram == manifest["histogram"]
  assert config["train.steps"] == 2 and config["track"] == "distill"


def test_resume_drops_lines_past_the_step_and_a_torn_tail(tmp_path):
  os.makedirs(workspace.metrics_dir(str(tmp_path)))
  lines = ['{"step": 1, "loss": 0.5}\n', '{"step": 2, "loss": 0.25}\n', '{"step": 3, "loss": 0.125}\n']
  with open(workspace.train_metrics_file(str(tmp_path)), "w") as f:
    f.write("".join(lines) + '{"step": 4, "lo')
  log = metrics.MetricsWriter(str(tmp_path))
  with pytest.warns(UserWarning, match="line 4 is cut short"):
    log.open_train_log(2)
  log.scalars(3, {"loss": 1.0}, prefix="train/", jsonl=True)
  log.close()
  assert open(workspace.train_metrics_file(str(tmp_path))).read() == lines[0] + lines[1] + '{"step": 3, "loss": 1.0}\n'


def test_an_evaluation_logs_accuracy_se_retain_and_sample_responses(tmp_path):
  workdir = str(tmp_path)
  directory = workspace.eval_dir(workdir, "final")
  os.makedirs(directory)
  with open(os.path.join(directory, "heldout.responses.jsonl"), "w") as f:
    for i in range(6):
      f.write(json.dumps({"id": f"p{i}", "truth": str(i), "verdicts": [i % 2 == 0], "extracted": [str(i)],
                          "responses": [f"the answer is {i}"]}) + "\n")
  result = {"tag": "final", "benchmarks": {"heldout": {"accuracy": 0.5, "se": 0.125, "greedy_pass1": None}},
            "retain": {"retain_set": "mmlu", "accuracy": 0.75}, "new": ["heldout", "retain"]}
  log = metrics.MetricsWriter(workdir)
  metrics.log_evaluation(log, workdir, result, 7)
  metrics.log_evaluation(log, workdir, {**result, "new": []}, 7)  # read back from disk: logged when it was made
  log.close()
  events = _tb_events(workspace.tensorboard_dir(workdir))
  scalars = {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value if v.HasField("simple_value")}
  assert scalars == {("eval/heldout/accuracy", 7): 0.5, ("eval/heldout/se", 7): 0.125,
                     ("eval/retain_mmlu/accuracy", 7): 0.75}
  (text,) = [v.tensor.string_val[0].decode() for e in events for v in e.summary.value if v.tag.startswith("samples")]
  assert text.count("the answer is") == 4 and "p0 (answer 0; correct" in text and "p1 (answer 1; wrong" in text


def _tb_scalars_after_purges(directory):
  """{(tag, step): [values]} as TensorBoard shows them: files in the order written, and a SessionLog.START at
  step p hides every event of a step >= p read before it (tensorboard's EventAccumulator purge)."""
  files = sorted(glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True), key=os.path.getmtime)
  kept = []
  for path in files:
    for e in _tb_events_of(path):
      if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START:
        kept = [(tag, step, v) for tag, step, v in kept if step < e.step]
      kept += [(v.tag, e.step, v.simple_value) for v in e.summary.value if v.HasField("simple_value")]
  shown = {}
  for tag, step, v in kept:
    shown.setdefault((tag, step), []).append(v)
  return shown


def test_a_killed_run_resumes_the_same_wandb_run_without_repeating_steps(tmp_path, tmp_path_factory, monkeypatch):
  pytest.importorskip("wandb")
  prepared = tiny_workspace.prepared(tmp_path_factory)
  workdir = str(tmp_path / "run")
  shutil.copytree(prepared[0], workdir)
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
  monkeypatch.setenv("WANDB_SILENT", "true")
  cfg = tiny_experiment(workdir, track="distill", train__steps=3, train__checkpoint_every=2,
                        wandb__project="paced-test")
  log_step, first = trainer._log_step, []

  def killed_after_step_3(log, record):  # logged, but killed before its checkpoint
    log_step(log, record)
    first.append(record)
    if record["step"] == 3:
      raise KeyboardInterrupt("killed")

  monkeypatch.setattr(trainer, "_log_step", killed_after_step_3)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(cfg, prepared[1], prepared[1], progress=False)
  monkeypatch.setattr(trainer, "_log_step", log_step)
  run_id = json.load(open(workspace.wandb_run_file(workdir)))["id"]
  trainer.train(cfg, prepared[1], prepared[1], progress=False)  # resumes from the checkpoint at step 2

  records = [json.loads(line) for line in open(workspace.train_metrics_file(workdir))]
  assert [r["step"] for r in records] == [1, 2, 3] and records[:2] == first[:2]
  shown = _tb_scalars_after_purges(workspace.tensorboard_dir(workdir))
  assert {step: v for (tag, step), v in shown.items() if tag == "train/loss"} == {
      r["step"]: [pytest.approx(r["loss"], rel=1e-6)] for r in records}
  events = _tb_events(workspace.tensorboard_dir(workdir))  # the settings and histogram: once, when training began
  assert [e.step for e in events for v in e.summary.value if v.tag == "pass_rate/round_0"] == [0]
  assert len([e for e in events for v in e.summary.value if v.tag.startswith("hparams")]) == 1
  runs = sorted(glob.glob(os.path.join(str(tmp_path / "wandb_dir"), "wandb", "offline-run-*")))
  assert len(runs) == 2 and all(r.endswith("-" + run_id) for r in runs)
  for run in runs:
    (path,) = glob.glob(os.path.join(run, "run-*.wandb"))
    (meta,) = [r.run for r in _wandb_records(path) if r.WhichOneof("record_type") == "run"]
    assert meta.run_id == run_id
  assert json.load(open(workspace.wandb_run_file(workdir)))["id"] == run_id


def test_evaluating_a_checkpoint_from_the_command_line_logs_it_at_its_step(trained, tmp_path_factory, monkeypatch):
  from paced_jax import pipeline
  workdir, _, _, wandb_dir = trained
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", wandb_dir)
  monkeypatch.setenv("WANDB_SILENT", "true")
  cfg = tiny_experiment(workdir, track="distill", train__steps=2, train__checkpoint_every=2,
                        wandb__project="paced-test")
  before = set(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*")))
  tag, result = pipeline.evaluate_model(cfg, tiny_workspace.prepared(tmp_path_factory)[1], 2, None)
  assert tag == "step2"
  summary = json.load(open(os.path.join(workspace.eval_dir(workdir, tag), "heldout.json")))
  events = _tb_events(workspace.tensorboard_dir(workdir))
  scalars = {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value if v.HasField("simple_value")}
  assert scalars[("eval/heldout/accuracy", 2)] == pytest.approx(summary["accuracy"], rel=1e-6)
  assert scalars[("eval/heldout/se", 2)] == pytest.approx(summary["se"], rel=1e-6)
  (text,) = [v.tensor.string_val[0].decode() for e in events for v in e.summary.value
             if v.tag.startswith("samples/heldout") and e.step == 2]
  responses = open(os.path.join(workspace.eval_dir(workdir, tag), "heldout.responses.jsonl")).read().splitlines()
  first = json.loads(responses[0])
  assert text.startswith(f"```\n{first['id']} (answer {first['truth']}; ") and first["responses"][0] in text
  # W&B: the same run as training, the accuracy drawn over the evaluated checkpoint's step.
  (run,) = set(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*"))) - before
  assert run.endswith("-" + json.load(open(workspace.wandb_run_file(workdir)))["id"])
  (path,) = glob.glob(os.path.join(run, "run-*.wandb"))
  history = lambda records: [{"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                              for item in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
  rows = history(_wandb_records(path, until=lambda records: any("eval/heldout/accuracy" in row
                                                                 for row in history(records))))
  (row,) = [row for row in rows if "eval/heldout/accuracy" in row]
  assert row["eval/checkpoint_step"] == 2 and row["eval/heldout/accuracy"] == pytest.approx(summary["accuracy"])


def test_a_finished_evaluation_or_training_run_again_logs_nothing_a_second_time(trained, tmp_path_factory,
                                                                                monkeypatch):
  from paced_jax import pipeline
  workdir, _, _, wandb_dir = trained
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", wandb_dir)
  monkeypatch.setenv("WANDB_SILENT", "true")
  model = tiny_workspace.prepared(tmp_path_factory)[1]
  settings = dict(track="distill", train__steps=2, train__checkpoint_every=2, wandb__project="paced-test")
  cfg = tiny_experiment(workdir, eval__retain_set="builtin:arith_mc:n=4", **settings)
  tensorboard, runs = workspace.tensorboard_dir(workdir), os.path.join(wandb_dir, "wandb", "offline-run-*")
  before = _tb_counts(tensorboard)
  pipeline.evaluate_model(cfg, model, 2, "again")
  once = _tb_counts(tensorboard)
  assert once - before == {("eval/heldout/accuracy", 2): 1, ("eval/heldout/se", 2): 1,
                           ("samples/heldout/text_summary", 2): 1, ("eval/retain_builtin_arith_mc_n_4/accuracy", 2): 1}
  runs_before = set(glob.glob(runs))
  pipeline.evaluate_model(cfg, model, 2, "again")  # every result read back from eval/again/
  trainer.train(tiny_experiment(workdir, **settings), model, model, progress=False)  # finished: nothing to do
  assert _tb_counts(tensorboard) == once
  new_runs = set(glob.glob(runs)) - runs_before
  assert len(new_runs) == 2
  for run in new_runs:
    (path,) = glob.glob(os.path.join(run, "run-*.wandb"))
    records = _wandb_records(path)
    assert not [r for r in records if r.WhichOneof("record_type") == "history"]
    assert not [u for r in records if r.WhichOneof("record_type") == "config" for u in r.config.update
                if u.key == "train.steps"]


def test_a_run_killed_before_its_first_checkpoint_logs_its_settings_once(tmp_path, tmp_path_factory, monkeypatch):
  prepared = tiny_workspace.prepared(tmp_path_factory)
  workdir = str(tmp_path / "run")
  shutil.copytree(prepared[0], workdir)
  cfg = tiny_experiment(workdir, track="distill", train__steps=1, train__checkpoint_every=1)
  log_step = trainer._log_step

  def killed(log, record):  # logged, but killed before its checkpoint: the rerun starts at step 0 again
    log_step(log, record)
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(trainer, "_log_step", killed)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(cfg, prepared[1], prepared[1], progress=False)
  monkeypatch.setattr(trainer, "_log_step", log_step)
  trainer.train(cfg, prepared[1], prepared[1], progress=False)
  counts = _tb_counts(workspace.tensorboard_dir(workdir))
  assert counts[("pass_rate/round_0", 0)] == 1 and counts[("hparams/text_summary", 0)] == 1
  assert counts[("train/loss", 1)] == 2  # the redone step: TensorBoard's purge at the restart hides the first
