"""Refusals that keep a run from giving silently wrong results: config ranges, the workdir lock,
temporaries of other processes, bad problem files, torn metrics, one-line CLI errors (exit 2)."""

import os
import subprocess
import sys

import pytest

from paced_jax import artifacts, config as config_lib, config_dict
from paced_jax.problems import prepare as prepare_lib
from paced_jax.problems.records import ProblemFileError
from stage_fixtures import ROOT, load_config_file


def _with(dotted: str, value):
  c = load_config_file("tiny.py")
  node = c
  *parents, leaf = dotted.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  return c


@pytest.mark.parametrize("dotted,value", [
    ("pass_rate.sampling.num_samples", -1), ("pass_rate.sampling.num_samples", 0), ("weights.alpha", -0.5),
    ("weights.beta", -1.0), ("train.lr", 0.0), ("train.lr", -1e-3), ("train.steps", 0), ("train.batch_size", 0),
    ("train.seq_len", 1), ("train.max_skipped_in_a_row", 0), ("eval.sampling.top_p", 1.5),
    ("problems.n_train", 0)])
def test_out_of_range_setting_is_refused_naming_the_field(dotted, value):
  with pytest.raises(config_lib.ConfigError) as e:
    config_dict.experiment(_with(dotted, value))
  assert str(e.value).startswith(f"config.{dotted}: must be") and repr(value) in str(e.value)


def test_in_range_settings_are_accepted():
  cfg = config_dict.experiment(_with("weights.alpha", 0.0))
  assert cfg.weights.alpha == 0.0 and cfg.pass_rate.sampling.num_samples == 4


_HOLD = ("import sys, time; from paced_jax import artifacts; artifacts.lock_workdir(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)")


def test_second_run_on_a_workdir_is_refused_with_the_holder(tmp_path):
  workdir = str(tmp_path / "w")
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(artifacts.ArtifactError, match=f"in use by another run \\(pid {holder.pid}: -c {workdir}"):
      artifacts.lock_workdir(workdir)
  finally:
    holder.kill()
    holder.wait()
  artifacts.lock_workdir(workdir)  # the OS released the dead holder's lock
  artifacts.lock_workdir(workdir)  # and this process may take it again


def test_stale_temporaries_only_of_dead_processes_are_removed(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  names = [f".train.jsonl.{dead.stdout.strip()}.abc.tmp", f".train.jsonl.{os.getpid()}.abc.tmp", "train.jsonl"]
  for n in names:
    (tmp_path / n).write_text("x")
  artifacts.remove_stale_temporaries(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == sorted(names[1:])


def test_atomic_temporaries_carry_the_pid(tmp_path):
  with artifacts.atomic_open(str(tmp_path / "a.json")) as f:
    f.write("{}")
    (tmp,) = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
  assert tmp.startswith(f".a.json.{os.getpid()}.")


def test_problem_file_with_a_bad_byte_names_the_file_and_line(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_bytes(b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "3"}\n')
  with pytest.raises(ProblemFileError, match=f"{path}: line 2: byte .* is not UTF-8"):
    prepare_lib.prepare(str(tmp_path / "w"), str(path), n_heldout=0, fields=prepare_lib.FieldMap(id=None))
  assert not os.path.exists(tmp_path / "w" / "problems" / artifacts.MANIFEST)


def test_empty_problem_file_is_refused(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text("")
  with pytest.raises(ProblemFileError, match="no problems"):
    prepare_lib.prepare(str(tmp_path / "w"), str(path), n_heldout=0, fields=prepare_lib.FieldMap(id=None))


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text('{"step": 1}\n{"step": 2}\n{"st')
  with pytest.warns(UserWarning, match=f"{path}: line 3 is cut short"):
    assert artifacts.read_jsonl_lines(str(path), drop_torn_tail=True) == [{"step": 1}, {"step": 2}]
  with pytest.raises(artifacts.ArtifactError, match="line 3"):
    artifacts.read_jsonl_lines(str(path))


def _cli(*args, workdir):
  return subprocess.run([sys.executable, "-m", "paced_jax.tools.train", *args, f"--config.workdir={workdir}"],
                        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)


_slow = pytest.mark.slow  # ~10 s each (a process that imports jax); one case of each kind stays fast


@pytest.mark.parametrize("args,message", [
    (["--config=configs/tiny.py", "--config.train.lrr=1"], "--config.train.lrr: config.train has no field 'lrr'; "
     "did you mean 'lr'?"),
    pytest.param(["--config=configs/tiny.py", "--config.trian.lr=1"], "config has no field 'trian'; did you mean "
                 "'train'?", marks=_slow),
    pytest.param(["--config=configs/tinyy.py"], "--config: no such file configs/tinyy.py; did you mean 'tiny.py'?",
                 marks=_slow),
    pytest.param(["--config=configs/tiny.py", "stray"], "unexpected argument(s) stray", marks=_slow),
    (["--config=configs/tiny.py", "--config.pass_rate.sampling.num_samples=-1"],
     "config.pass_rate.sampling.num_samples: must be >= 1, got -1"),
    pytest.param(["--config=configs/tiny.py", "--config.train.seq_len=1"], "config.train.seq_len: must be >= 2, got 1",
                 marks=_slow)])
def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, args, message):
  workdir = tmp_path / "w"
  r = _cli(*args, workdir=workdir)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr, r.stderr
  assert not workdir.exists()  # refused before anything is written
