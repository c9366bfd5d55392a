"""launch/run.sh: the exact commands of a TPU-pod and a local dry run, refused stages, shellcheck."""

import os
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "launch", "run.sh")
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
TARGET = ["--zone=us-east5-a", "--worker=all"]


def _run(*args):
  return subprocess.run(["bash", RUN, *args], capture_output=True, text=True, timeout=60, cwd="/")


def _commands(*args):
  out = _run("--dry-run", *args)
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines()]


def test_tpu_dry_run_prints_copy_setup_and_distributed_run():
  cmds = _commands("--tpu=my-pod", "--zone=us-east5-a", "pipeline", "--config=configs/qwen3_distill.py:v5p-64",
                   "--config.workdir=/mnt/runs/my run")
  assert len(cmds) == 5
  assert cmds[0] == ["cd", ROOT]
  assert cmds[1] == GCLOUD + ["ssh", "my-pod", *TARGET,
                              "--command=rm -rf ~/paced-jax-incoming && mkdir -p ~/paced-jax-incoming"]
  scp = cmds[2]
  assert scp[:6] == GCLOUD + ["scp", "--recurse"] and scp[-3:] == ["my-pod:~/paced-jax-incoming/", *TARGET]
  sources = scp[6:-3]
  assert {"paced_jax", "configs", "launch", "pyproject.toml"} <= set(sources)
  assert not {".venv", ".git"} & set(sources) and not any(s.startswith("workdir") for s in sources)
  setup = cmds[3]
  assert setup[:-1] == GCLOUD + ["ssh", "my-pod", *TARGET]
  assert setup[-1].startswith("--command=mkdir -p ~/paced-jax && ")
  assert "cp -a ~/paced-jax-incoming/. ~/paced-jax/" in setup[-1]
  assert setup[-1].endswith("cd ~/paced-jax && bash launch/setup.sh --tpu")
  run = cmds[4]
  assert run[:-1] == GCLOUD + ["ssh", "my-pod", *TARGET]
  remote = run[-1].removeprefix("--command=")
  # What each worker's shell runs: user flags survive quoting intact, the distributed flag last.
  assert shlex.split(remote) == [
      "cd", "~/paced-jax", "&&", ".venv/bin/python", "-m", "paced_jax.tools.pipeline",
      "--config=configs/qwen3_distill.py:v5p-64", "--config.workdir=/mnt/runs/my run", "--config.mesh.distributed=True"]


def test_tpu_dry_run_with_project_and_no_config():
  cmds = _commands("--tpu", "pod2", "--zone", "europe-west4-a", "--project=my-proj", "report", "--workdir=/mnt/w")
  for cmd in cmds[1:]:
    assert cmd[:4] == GCLOUD and "--project=my-proj" in cmd and "--worker=all" in cmd
  # Stages without --config (prepare, report --workdir) get no config override they cannot parse.
  assert shlex.split(cmds[-1][-1].removeprefix("--command="))[-1] == "--workdir=/mnt/w"


def test_local_dry_run_prints_the_local_command():
  assert _commands("train", "--config=configs/tiny.py", "--config.prompts.system=it's $HOME") == [
      ["cd", ROOT], [".venv/bin/python", "-m", "paced_jax.tools.train", "--config=configs/tiny.py",
                     "--config.prompts.system=it's $HOME"]]
  assert _commands("--setup", "evaluate", "--config=configs/demo.py:quick") == [
      ["cd", ROOT], ["bash", "launch/setup.sh"],
      [".venv/bin/python", "-m", "paced_jax.tools.evaluate", "--config=configs/demo.py:quick"]]


@pytest.mark.parametrize("args,message", [
    (["bogus", "--config=configs/tiny.py"], "unknown stage 'bogus'; expected one of: prepare pass_rate"),
    ([], "missing STAGE"),
    (["--tpu=my-pod", "train"], "needs --zone"),
    (["--zone=us-east5-a", "train"], "only apply with --tpu"),
    (["--frobnicate", "train"], "unknown option '--frobnicate'"),
])
def test_bad_invocations_fail_clearly(args, message):
  out = _run("--dry-run", *args)
  assert out.returncode == 2 and message in out.stderr and not out.stdout


def test_help():
  out = _run("--help")
  assert out.returncode == 0 and out.stdout.startswith("Usage: launch/run.sh")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", ["run.sh", "setup.sh", "aot_env.sh"])
def test_shellcheck(script):
  out = subprocess.run(["shellcheck", os.path.join(ROOT, "launch", script)], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout
