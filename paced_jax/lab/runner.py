"""The method lab's runner: every weighting method x track x seed from one bootstrapped pair.

  WORKDIR/lab.json                 the LabConfig of the last run (the report reads it)
  WORKDIR/models/{teacher,student} bootstrapped Hugging Face directories (lab_bootstrap.py)
  WORKDIR/shared/                  one pipeline workspace holding what every run shares:
    problems/, pass_rates/0000/      the initial student's pass rates (one set for all runs)
    references/, teacher/            the teacher's references and top-k store (offline tracks)
    eval/initial/, eval/teacher/     the initial student and the teacher on held-out + solved set
    snr/<track>/                     gradient SNR at the initial student, per track
    pool/, solved.jsonl              the retain set: unseen problems the initial student solved K/K
  WORKDIR/runs/<track>/<run>/seed<s>/  one pipeline workspace per run (<run>: lab_config.run_names): the shared inputs are
                                   symlinked in; checkpoints/, metrics/, eval/final/ are its own,
                                   and so is pass_rates/: only its round 0000 links to the shared
                                   one, so a recomputed round stays inside the run that made it

Every run makes one pass over fresh problems (train.one_pass: none is seen twice) with the same
batch size and learning rate. Uniform and AKL take N / batch_size steps over the pool's first N
(lab.unique_problems); a method that gives some problems weight 0 runs twice: `.equal_data` over
the same N (fewer steps: the kept ones), `.equal_steps` for the same steps drawing kept problems
from the whole pool. Methods differ only in the weights and the divergence, tracks only in the
data source, divergence and teacher (TRACKS), seeds only in the walk order and the on-policy
rollouts. The two-stage track recomputes pass rates at its midpoint (each run in its own
pass_rates/). A run whose final evaluation exists is skipped, so the same command finishes an
interrupted lab.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from paced_jax import workspace
from paced_jax import artifacts, mesh as mesh_lib
from paced_jax.evaluation import evaluate
from paced_jax.lab import bootstrap as lab_bootstrap
from paced_jax.problems import lab_arithmetic
from paced_jax.model import loaded as loaded_model
from paced_jax.evaluation import pass_rate
from paced_jax.problems import prepare as prepare_lib
from paced_jax.teacher import reference
from paced_jax.analysis import snr
from paced_jax.teacher import stage as teacher_stage
from paced_jax.training import data as training_data
from paced_jax.training import trainer
from paced_jax.config import ExperimentConfig
from paced_jax.config_dict import to_json
from paced_jax.lab.config import LabConfig, bootstrap_prompts, method_settings, run_names, split_run_name

SOLVED = "solved"          # benchmark name of the retain set
TEACHER_TAG = "teacher"    # eval tag of the teacher in the shared workspace
SHARED_LINKS = ("problems", "references", "teacher")   # symlinked whole into every run
SHARED_ROUND = 0           # the initial student's pass rates: the only round every run starts from
# The paper's divergence per track; the two-stage schedule picks FKL then RKL itself (trainer.stage_of).
TRACK_LOSS = {"distill": "fkl", "self_distill": "rkl", "two_stage": "fkl"}


def solved_path(lab: LabConfig) -> str:
  return os.path.join(workspace.lab_shared_dir(lab.workdir), "solved.jsonl")


def _benchmarks(lab: LabConfig) -> tuple[str, ...]:
  """Held-out problems, and the solved set once it exists and is not empty."""
  path = solved_path(lab)
  return ("heldout",) + ((f"{path}:name={SOLVED}",) if os.path.exists(path) and os.path.getsize(path) else ())


def _base(lab: LabConfig, workdir: str) -> ExperimentConfig:
  models = workspace.lab_models_dir(lab.workdir)
  eval_cfg = dataclasses.replace(lab.experiment.eval, benchmarks=_benchmarks(lab))
  return dataclasses.replace(lab.experiment, workdir=workdir, student=os.path.join(models, "student"),
                             teacher=os.path.join(models, "teacher"), eval=eval_cfg)


def track_config(lab: LabConfig, track: str, workdir: str) -> ExperimentConfig:
  """A track's settings: distill and two-stage learn from the teacher model (no privileged
  context); self-distillation from the frozen initial student given `self_distill_context`."""
  cfg = _base(lab, workdir)
  self_distill = track == "self_distill"
  prompts = dataclasses.replace(cfg.prompts, teacher_context=lab.self_distill_context if self_distill else "none")
  return dataclasses.replace(cfg, track=track, teacher="" if self_distill else cfg.teacher, prompts=prompts,
                             train=dataclasses.replace(cfg.train, loss=TRACK_LOSS[track]))


def equal_steps(lab: LabConfig) -> int:
  return lab.unique() // lab.experiment.train.batch_size


def run_config(lab: LabConfig, track: str, name: str, seed: int) -> ExperimentConfig:
  """One run's settings. An `.equal_data` run's steps are the full batches of its kept problems
  among the first N under the shared round-0 pass rates (so prepare_shared must have run)."""
  method, budget = split_run_name(name)
  cfg = track_config(lab, track, workspace.lab_run_dir(lab.workdir, track, name, seed))
  scheme, alpha, beta, loss = method_settings(method)
  weights = dataclasses.replace(cfg.weights, scheme=scheme, alpha=alpha, beta=beta)
  t = cfg.train
  pool = 0 if budget == "equal_steps" else lab.unique()
  train = dataclasses.replace(t, seed=seed, loss=loss or t.loss, one_pass=True, pool=pool, steps=equal_steps(lab),
                              rollout_sampling=dataclasses.replace(t.rollout_sampling, seed=seed))
  cfg = dataclasses.replace(cfg, weights=weights, train=train)
  if budget == "equal_data":
    shared = dataclasses.replace(cfg, workdir=workspace.lab_shared_dir(lab.workdir))
    steps = training_data.one_pass_steps(shared, SHARED_ROUND)
    if steps < 2:
      raise ValueError(f"lab {track}/{name}: {steps} full batches of kept problems among the first "
                       f"{lab.unique()}; raise unique_problems")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
  # The midpoint checkpoint feeds the SNR at a training step; the two-stage track recomputes pass
  # rates at its midpoint, as the paper's two-stage tables (and presets) do.
  half = cfg.train.steps // 2
  cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=half))
  if track == "two_stage":
    cfg = dataclasses.replace(cfg, pass_rate=dataclasses.replace(cfg.pass_rate, recompute_every=half))
  return cfg


# ---------------------------------------------------------------------------------------------
# Shared stage: bootstrap, problems, pass rates, teacher store, retain set, baselines, SNR.


def _prepare(cfg: ExperimentConfig) -> None:
  p = cfg.problems
  prepare_lib.prepare(cfg.workdir, p.source, n_train=p.n_train, n_heldout=p.n_heldout, seed=p.seed)


def level_histogram(workdir: str) -> dict[int, list[int]]:
  """Correct-count histogram of the initial student's pass rates, per difficulty level."""
  directory = workspace.pass_rates_dir(workdir, SHARED_ROUND)
  records = {r["id"]: r for r in pass_rate.read_records(directory)}
  out: dict[int, list[int]] = {}
  for p in prepare_lib.read_problems(workdir, "train"):
    r = records[p.id]
    out.setdefault(p.level or 0, [0] * (r["K"] + 1))[r["correct"]] += 1
  return dict(sorted(out.items()))


def format_level_histogram(hist: dict[int, list[int]]) -> str:
  K = len(next(iter(hist.values()))) - 1
  lines = ["level  " + " ".join(f"{c}/{K}".rjust(5) for c in range(K + 1)) + "   mean p"]
  for level, counts in hist.items():
    mean = sum(c * n for c, n in enumerate(counts)) / max(sum(counts), 1) / K
    lines.append(f"{level:5d}  " + " ".join(f"{n:5d}" for n in counts) + f"   {mean:.3f}")
  total = [sum(col) for col in zip(*hist.values())]
  lines.append("  all  " + " ".join(f"{n:5d}" for n in total))
  return "\n".join(lines)


def _solved_set(lab: LabConfig, cfg: ExperimentConfig, student) -> str:
  """shared/solved.jsonl: held-out-partition problems beyond the evaluation set that the initial
  student solved in all K pass-rate rollouts (forgetting is measured on them)."""
  path = solved_path(lab)
  if os.path.exists(path):
    return path
  p = cfg.problems
  pool = lab_arithmetic.generate(p.n_heldout + lab.retain_pool, p.seed, "heldout")[p.n_heldout:]  # prefix-stable
  pool_dir = os.path.join(workspace.lab_shared_dir(lab.workdir), "pool")
  pool_file = os.path.join(pool_dir, "pool.jsonl")
  if not os.path.exists(pool_file):
    with artifacts.atomic_open(pool_file) as f:
      for q in pool:
        f.write(json.dumps({"id": q.id, "problem": q.prompt, "answer": q.answer, "solution": q.solution,
                            "level": q.level}) + "\n")
  pool_cfg = dataclasses.replace(cfg, workdir=pool_dir)
  prepare_lib.prepare(pool_dir, pool_file, n_train=None, n_heldout=0)
  records = {r["id"]: r for r in pass_rate.read_records(pass_rate.run(pool_cfg, student))}
  with artifacts.atomic_open(path) as f:
    for q in pool:
      if records[q.id]["correct"] == records[q.id]["K"]:
        f.write(json.dumps({"id": q.id, "problem": q.prompt, "answer": q.answer, "level": q.level}) + "\n")
  return path


def prepare_shared(lab: LabConfig, mesh=None):
  """Everything the runs share; returns (student, teacher) LoadedModels. Each piece is reused
  when it is complete, so this is cheap after the first time."""
  tic = time.time()
  os.makedirs(lab.workdir, exist_ok=True)
  artifacts.write_json(os.path.join(lab.workdir, "lab.json"), to_json(lab))
  mesh = mesh or mesh_lib.make_mesh(lab.experiment.mesh)
  lab_bootstrap.bootstrap(workspace.lab_models_dir(lab.workdir), lab.bootstrap, bootstrap_prompts(lab), mesh)
  distill = track_config(lab, "distill", workspace.lab_shared_dir(lab.workdir))
  _prepare(distill)
  student = loaded_model.load(distill.student, mesh, distill.model)
  teacher = loaded_model.load(distill.teacher, mesh, distill.model)
  teacher_stage.check_same_tokenizer(student, teacher)
  pass_rate.run(distill, student)
  stale = pass_rate.latest_round(distill.workdir)
  if stale != SHARED_ROUND:  # written through the shared link by runs of an older lab
    print(f"warning: {distill.workdir}/pass_rates holds rounds up to {stale:04d} from an older lab's runs; "
          f"every run starts from round {SHARED_ROUND:04d}, and rounds a run recomputes stay in that run", flush=True)
  print("initial student's pass rates by level (problems per correct count of K):\n"
        + format_level_histogram(level_histogram(distill.workdir)), flush=True)
  if {"distill", "two_stage"} & set(lab.tracks):
    reference.run(distill, teacher)
    teacher_stage.run(distill, teacher)
  _solved_set(lab, distill, student)
  distill = track_config(lab, "distill", workspace.lab_shared_dir(lab.workdir))  # now with the solved set among its benchmarks
  evaluate.evaluate(distill, student, tag=evaluate.BASELINE_TAG)
  evaluate.evaluate(distill, teacher, tag=TEACHER_TAG)
  if lab.snr:
    for track in lab.tracks:
      if track == "two_stage":
        continue  # its first stage is the distillation track's FKL on the same references
      cfg = track_config(lab, track, workspace.lab_shared_dir(lab.workdir))
      snr.run(cfg, student, student if track == "self_distill" else teacher, tag=track, round=SHARED_ROUND,
              source="offline" if track == "distill" else "on_policy")
  print(f"shared stage ready ({(time.time() - tic) / 60:.1f} min)", flush=True)
  return student, teacher


# ---------------------------------------------------------------------------------------------
# Runs.

# The shared workspace's inputs a run links to as they are (pass rates: see _link_shared).
SHARED_LINKS = (workspace.problems_dir, workspace.references_dir, workspace.teacher_dir)
RUN_RECORD = "lab_run.json"


def _link_shared(lab: LabConfig, workdir: str) -> None:
  """Symlink the shared inputs into a run's workspace (relative, so the lab directory can move).

  pass_rates/ is the run's own directory holding a link to the shared round 0 alone: the trainer
  starts from the latest round it finds and writes a recompute as latest + 1, so a shared
  pass_rates/ would hand one run's recomputed rates to the next run as its starting weights.
  """
  os.makedirs(workdir, exist_ok=True)
  for path_of in SHARED_LINKS:
    target, link = path_of(workspace.lab_shared_dir(lab.workdir)), path_of(workdir)
    if os.path.exists(target) and not os.path.lexists(link):
      os.symlink(os.path.relpath(target, workdir), link)
  rates = workspace.pass_rates_root(workdir)
  if os.path.islink(rates):  # a run laid out before runs owned their rounds
    os.unlink(rates)
  target = workspace.pass_rates_dir(workspace.lab_shared_dir(lab.workdir), SHARED_ROUND)
  link = workspace.pass_rates_dir(workdir, SHARED_ROUND)
  if os.path.exists(target) and not os.path.lexists(link):
    os.makedirs(rates, exist_ok=True)
    os.symlink(os.path.relpath(target, rates), link)


def _outcome_settings(cfg: ExperimentConfig) -> dict:
  """The settings a run's result depends on: all but the (shared) diagnostic's."""
  return {k: v for k, v in to_json(cfg).items() if k not in ("snr", "run_snr")}


def run_one(lab: LabConfig, track: str, name: str, seed: int, student, teacher) -> dict:
  """Train and evaluate one (track, run name, seed); a finished run is read back, not redone."""
  cfg = run_config(lab, track, name, seed)
  record_path = os.path.join(cfg.workdir, RUN_RECORD)
  config_path = workspace.config_file(cfg.workdir)
  if os.path.exists(config_path):  # a finished or killed run of other settings is never mixed in
    artifacts.expect_fields(config_path, artifacts.read_json(config_path), _outcome_settings(cfg))
  if os.path.exists(record_path):
    return artifacts.read_json(record_path)
  tic = time.time()
  _link_shared(lab, cfg.workdir)
  artifacts.write_json(config_path, to_json(cfg))
  frozen = student if track == "self_distill" else teacher
  trainer.train(cfg, student, frozen, progress=False)
  step, params = trainer.restore_params(cfg, student)
  result = evaluate.evaluate(cfg, student, params=params, tag="final",
                             fingerprint=f"{student.fingerprint}@{track}/{name}/seed{seed}/step{step}")
  method, budget = split_run_name(name)
  record = {"track": track, "method": name, "budget": budget or "both", "seed": seed, "steps": step,
            "problems": step * cfg.train.batch_size,  # one pass: every problem drawn is a new one
            "seconds": time.time() - tic,
            "accuracy": {b: s["accuracy"] for b, s in result["benchmarks"].items()}}
  artifacts.write_json(record_path, record)  # last: marks the run finished
  return record


SNR_RUN = "uniform"   # the run whose midpoint checkpoint the SNR at a training step reads (its first seed)


def snr_at_step(lab: LabConfig, track: str, student, teacher) -> str:
  """Gradient SNR at the midpoint of uniform's first-seed run (that run must have finished), in its
  workspace: snr/<track>_step<N>/ with the run's latest pass rates (the two-stage track's midpoint
  recompute; the other tracks have only the initial student's)."""
  cfg = run_config(lab, track, SNR_RUN, lab.seeds[0])
  step = cfg.train.checkpoint_every
  return snr.run(cfg, student, student if track == "self_distill" else teacher, tag=f"{track}_step{step}",
                 step=step, source="offline" if track == "distill" else "on_policy")


def run_all(lab: LabConfig, student=None, teacher=None) -> list[dict]:
  """Uniform's first seed per track and the SNR at its midpoint first, then every other run seed
  by seed (a partial lab then still has whole tables for its first seeds)."""
  if student is None:
    student, teacher = prepare_shared(lab)
  names = run_names(lab.methods)
  order = [(seed, track, name) for seed in lab.seeds for track in lab.tracks for name in names]
  if lab.snr and SNR_RUN in names:
    first = [(lab.seeds[0], track, SNR_RUN) for track in lab.tracks]
    order = first + [x for x in order if x not in first]
  records = []
  tic = time.time()
  for seed, track, name in order:
    record = run_one(lab, track, name, seed, student, teacher)
    records.append(record)
    acc = record["accuracy"].get("heldout")
    print(f"[{len(records)}/{len(order)}] {track} {name} seed {seed}: held-out "
          f"{'-' if acc is None else f'{100 * acc:.1f}%'}, {record['steps']} steps, {record['seconds']:.0f} s "
          f"(lab {(time.time() - tic) / 60:.1f} min)", flush=True)
    if lab.snr and (seed, name) == (lab.seeds[0], SNR_RUN):
      snr_at_step(lab, track, student, teacher)
      print(f"gradient SNR of {track} at uniform's midpoint ready (lab {(time.time() - tic) / 60:.1f} min)", flush=True)
  return records
