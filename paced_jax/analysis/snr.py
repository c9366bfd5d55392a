"""Gradient-SNR diagnostic (METHOD.md section 5) -> WORKDIR/snr/<tag>/.

At one student state, each of the training problems gets the gradient of its *unweighted*
distillation loss (its sequence alone in a row, weight 1, weight_norm 'none'), reduced to X
numbers. Problems are binned by their correct count c of K (p = c / K); per bin
  SNR = ||g_mean||^2 / mean_i ||g_i - g_mean||^2,
its noise floor (the SNR of n problems of pure noise) and the signal share above it, with
bootstrap intervals over the bin's problems (snr_stats.py). Every problem with a pass rate is
measured unless `num_problems` caps it. The student state is the initial one, or the training
checkpoint of `step` (tag `step<N>`). Files: snr.csv, snr.png (SNR against its floor, the signal
share against 0), summary.txt, projections.npz (the [P, X] matrix, to re-analyse), manifest.json.

Projection: a count sketch (the sparse JL transform with one +-1 per coordinate): coordinate j of
the selected parameters adds s(j) g_j to bucket h(j) in [0, X), with h and s from a 32-bit hash
of (seed, parameter path, j) computed inside the jitted step. No [#params, X] matrix or
[#params] table is ever stored, and a problem costs O(#params), not the O(#params X) of a dense
Gaussian (7e12 multiply-adds per problem for 1.7B x 4096). Inner products are preserved in
expectation, E <Sx, Sy> = <x, y>, and Var ||Sx||^2 <= 2 ||x||^4 / X, so numerator and denominator
keep their meaning. `dim=0` skips the projection: the exact gradient of the parameters matching
`param_regex` (then X is their count, and the noise floor uses it).

The statistics, their conventions (noise floor, inf, nan) and the csv / plot are in snr_stats.py.

Shape suffixes (the legend in paced_jax/__init__.py): P problems, X sketch dimensions, A pass-rate buckets.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paced_jax import workspace
from paced_jax import artifacts
from paced_jax.evaluation import pass_rate
from paced_jax.analysis import snr_stats
from paced_jax.model import tokenization
from paced_jax.training import trainer
from paced_jax.training import data as training_data
from paced_jax.training import weights as weights_lib
from paced_jax.training import train_step as ts
from paced_jax.config import ExperimentConfig, SNRConfig
from paced_jax.config_dict import to_json
from paced_jax.model.loaded import LoadedModel
from paced_jax.training.packing import pack
from paced_jax.problems.prepare import read_problems
from paced_jax.sampling.sampler import Sampler

KIND = "snr"
SUMMARY = "summary.txt"  # the one-sentence verdict: which bins sit above their noise floor
MAX_UNPROJECTED = 1 << 24  # dim=0 keeps every selected coordinate: refuse matrices beyond [P, 16M]
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ---------------------------------------------------------------------------------------------
# Projection and per-problem gradients (jitted).


def _mix32(x):
  """lowbias32 (C. Wellons): a bijective 32-bit hash with full avalanche; numpy or jnp uint32."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _leaf_keys(path: str, seed: int) -> tuple[np.uint32, np.uint32]:
  base = np.uint32((zlib.crc32(path.encode()) ^ (seed * 0x9E3779B9)) & 0xFFFFFFFF)
  with np.errstate(over="ignore"):
    return _mix32(base), _mix32(base ^ np.uint32(0x5BD1E995))


def count_sketch(leaves, paths, dim: int, seed: int) -> jax.Array:
  """f32 [dim] count sketch of the concatenated leaves; the hash of (seed, path, index) decides."""
  out_X = jnp.zeros((dim,), jnp.float32)
  for leaf, path in zip(leaves, paths):
    k_bucket, k_sign = _leaf_keys(path, seed)
    flat = jnp.zeros(leaf.shape, jnp.uint32)
    for axis, stride in enumerate(np.cumprod((leaf.shape + (1,))[::-1])[::-1][1:]):
      flat = flat + jax.lax.broadcasted_iota(jnp.uint32, leaf.shape, axis) * np.uint32(stride)
    # Flat index from iotas, not a reshape: a sharded leaf stays in place, the scatter reduces it.
    bucket = _mix32(flat + k_bucket) % np.uint32(dim)
    sign = jnp.where(_mix32(flat ^ k_sign) >> 31 == 1, -1.0, 1.0)
    out_X = out_X.at[bucket.astype(jnp.int32)].add(sign * leaf.astype(jnp.float32))
  return out_X


def param_paths(params) -> list[str]:
  """'/'-joined paths of a pure-dict parameter tree, in leaf order."""
  def name(k):
    return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
  return ["/".join(name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def per_problem_gradients(params, rows: ts.Batch, scfg: ts.StepConfig, mesh, *, param_regex: str = "", dim: int,
                          seed: int = 0, rows_per_call: int = 8, vmap_rows: int = 1):
  """(loss [P], gradient norm [P], projected gradient [P, X]) of each single-row batch in `rows` [P, 1, T...]."""
  if isinstance(params, nnx.State):
    params = nnx.to_pure_dict(params)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  paths = param_paths(params)
  mask = [bool(re.search(param_regex, p)) for p in paths] if param_regex else [True] * len(paths)
  if not any(mask):
    raise ValueError(f"param_regex {param_regex!r} matches no parameter (paths look like {paths[0]!r})")
  chosen = [p for p, m in zip(paths, mask) if m]
  size = sum(int(np.prod(x.shape)) for x, m in zip(leaves, mask) if m)
  if dim == 0 and size > MAX_UNPROJECTED:
    raise ValueError(f"dim=0 keeps all {size} selected coordinates (> {MAX_UNPROJECTED}); set dim or param_regex")
  selected = [x for x, m in zip(leaves, mask) if m]
  rest = [x for x, m in zip(leaves, mask) if not m]

  def loss_fn(sel, oth, row):
    it_sel, it_oth = iter(sel), iter(oth)
    tree = jax.tree_util.tree_unflatten(treedef, [next(it_sel) if m else next(it_oth) for m in mask])
    return ts.loss_and_metrics(tree, row, None, scfg)[0]

  def one(sel, oth, row):
    loss, g = jax.value_and_grad(loss_fn)(sel, oth, row)
    proj = count_sketch(g, chosen, dim, seed) if dim else jnp.concatenate([x.reshape(-1) for x in g])
    return loss, optax.global_norm(g), proj.astype(jnp.float32)

  step = jax.jit(lambda sel, oth, chunk: jax.lax.map(lambda r: one(sel, oth, r), chunk, batch_size=vmap_rows))
  P = rows.tokens.shape[0]
  out = []
  with jax.set_mesh(mesh):
    for first in range(0, P, rows_per_call):
      idx = np.arange(first, first + rows_per_call) % P  # the last call repeats rows: one compile
      chunk = jax.tree.map(lambda x: np.asarray(x)[idx], rows)
      out.append(jax.device_get(step(selected, rest, chunk)))
  loss_P, norm_P, proj_PX = (np.concatenate([o[i] for o in out])[:P] for i in range(3))
  return loss_P, norm_P, proj_PX


# ---------------------------------------------------------------------------------------------
# The stage.


def settings(cfg: ExperimentConfig, **overrides) -> SNRConfig:
  """cfg.snr (when the config has it) or the defaults, with the non-None overrides applied."""
  base = getattr(cfg, "snr", None) or SNRConfig()
  return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def default_tag(step: int) -> str:
  return "initial" if step < 0 else f"step{step}"


def _source_and_divergence(cfg: ExperimentConfig, s: SNRConfig) -> tuple[str, str]:
  source = s.source
  if source == "auto":
    has_store = os.path.exists(os.path.join(workspace.teacher_dir(cfg.workdir), artifacts.MANIFEST))
    source = "offline" if has_store else "on_policy"
  if s.divergence != "auto":
    return source, s.divergence
  stages = [trainer.stage_of(cfg, step) for step in (0, max(cfg.train.steps - 1, 0))]
  return source, next((div for src, div in stages if src == source), cfg.train.loss)


def _examples(cfg, student, teacher, params, problems, data, source):
  """(index into problems, Example) of each problem that has a sequence to learn from."""
  if source == "offline":
    refs, store = training_data.load_offline(cfg, teacher)
    found = [(i, training_data.offline_examples([p], data, refs, store, student.tokenizer, cfg)) for i, p in
             enumerate(problems)]
    return [(i, ex[0]) for i, ex in found if ex]
  sampler = Sampler.for_model(student, params)
  examples, _ = training_data.on_policy_examples(problems, data, sampler, teacher, teacher.params, 0, cfg)
  return list(enumerate(examples))


def run(cfg: ExperimentConfig, student: LoadedModel, teacher: LoadedModel, *, tag: str | None = None,
        params=None, fingerprint: str | None = None, num_problems: int | None = None, dim: int | None = None,
        **overrides) -> str:
  """Compute (or reuse) WORKDIR/snr/<tag>/; returns the directory.

  The student state is `params` when given, else the checkpoint of settings' `step` (>= 0), else the
  initial student. Settings come from `settings(cfg, num_problems=..., dim=..., **overrides)` (SNRConfig
  fields); the tag defaults to `initial` / `step<N>`.
  """
  s = settings(cfg, num_problems=num_problems, dim=dim, **overrides)
  tag = tag or default_tag(s.step)
  if not _TAG_RE.match(tag):
    raise ValueError(f"tag {tag!r} is not a plain directory name (letters, digits, _.+-)")
  if params is None and s.step >= 0:
    with trainer.checkpoint_manager(cfg.workdir) as mngr:
      kept = sorted(mngr.all_steps())
    if s.step not in kept:  # the trainer keeps only its latest checkpoints (train.checkpoint_every)
      raise FileNotFoundError(f"{cfg.workdir}/checkpoints: no checkpoint of step {s.step} (kept: {kept})")
    step, params = trainer.restore_params(cfg, student, s.step)
    fingerprint = fingerprint or f"{student.fingerprint}@step{step}"
  if params is None:
    params, fingerprint = student.params, fingerprint or student.fingerprint
  elif fingerprint is None:
    from paced_jax.evaluation.evaluate import params_fingerprint  # deferred: evaluation machinery is not needed otherwise
    fingerprint = f"{student.fingerprint}+params:{params_fingerprint(params)}"
  round_ = pass_rate.latest_round(cfg.workdir) if s.round < 0 else s.round
  if round_ is None:
    raise FileNotFoundError(f"{cfg.workdir}/pass_rates: no finished round; run the pass_rate stage first")
  rate_dir = workspace.pass_rates_dir(cfg.workdir, round_)
  source, divergence = _source_and_divergence(cfg, s)
  directory = workspace.snr_dir(cfg.workdir, tag)
  expected = {"tag": tag, "model_fingerprint": fingerprint, "pass_rates": os.path.relpath(rate_dir, cfg.workdir),
              "source": source, "divergence": divergence, "settings": to_json(s),
              "projection": "count_sketch" if s.dim else "none", "weights": to_json(cfg.weights),
              "loss": {k: getattr(cfg.train, k) for k in ("token_reduction", "temperature", "seq_len")}}
  if os.path.exists(os.path.join(directory, artifacts.MANIFEST)):
    artifacts.expect_fields(os.path.join(directory, artifacts.MANIFEST), artifacts.read_manifest(directory, KIND),
                            expected)
    return directory

  records = {r["id"]: r for r in pass_rate.read_records(rate_dir)}
  problems = [p for p in read_problems(cfg.workdir, "train") if p.id in records]
  if not problems:
    raise ValueError(f"{rate_dir}: no pass rate for any training problem")
  K = records[problems[0].id]["K"]
  chosen = snr_stats.select_problems([records[p.id]["correct"] for p in problems], K, s.num_problems, seed=s.seed,
                                     stratified=s.stratified, equal_n=s.equal_n)
  picked = [problems[i] for i in chosen]
  # Every weight 1: the diagnostic measures the raw per-problem signal that PACED then reweights.
  data = training_data.WeightedProblems(tuple(picked), {p.id: 1.0 for p in picked},
                                        {p.id: records[p.id]["correct"] for p in picked}, K, 0, rate_dir)
  found = _examples(cfg, student, teacher, params, picked, data, source)
  longest = max((len(ex.tokens) for _, ex in found), default=1)
  T = min(cfg.train.seq_len, max(16, 1 << (longest - 1).bit_length()))
  pad = tokenization.pad_id(student.tokenizer)
  packed = [(i, pack([ex], 1, T, cfg.teacher_signal.top_k, pad_id=pad)) for i, ex in found]
  kept = [(i, b) for i, (b, dropped) in packed if not dropped]
  if len(kept) < 2:
    raise ValueError(f"only {len(kept)} of {len(picked)} problems have a sequence that fits seq_len={T}")
  rows = jax.tree.map(lambda *x: np.stack(x), *(b for _, b in kept))
  base = trainer.step_config(cfg, student, divergence, K + 1)
  scfg = dataclasses.replace(base, weight_norm="none", train=dataclasses.replace(base.train, micro_batches=1))
  loss_P, norm_P, proj_PX = per_problem_gradients(params, rows, scfg, student.mesh, param_regex=s.param_regex,
                                                  dim=s.dim, seed=s.seed, rows_per_call=s.rows_per_call,
                                                  vmap_rows=s.vmap_rows)
  ids = [picked[i].id for i, _ in kept]
  correct_P = np.asarray([data.correct[i] for i in ids], np.int64)
  table = snr_stats.binned_snr(proj_PX, correct_P, K, resamples=s.resamples, confidence=s.confidence, seed=s.seed)
  w_A = weights_lib.raw_weights(np.arange(K + 1), K, cfg.weights)
  snr_stats.write_csv(os.path.join(directory, "snr.csv"), table, w_A, loss_P, norm_P, correct_P)
  snr_stats.plot(os.path.join(directory, "snr.png"), table, w_A,
                 title=f"gradient SNR ({tag}, {divergence}, D={proj_PX.shape[1]})")
  text = snr_stats.summary(snr_stats.read_csv(os.path.join(directory, "snr.csv")), s.confidence)
  artifacts.write_bytes(os.path.join(directory, SUMMARY), (text + "\n").encode())
  buf = io.BytesIO()
  np.savez(buf, grads_PX=proj_PX.astype(np.float32), correct_P=correct_P, loss_P=loss_P, grad_norm_P=norm_P,
           ids=np.asarray(ids))
  artifacts.write_bytes(os.path.join(directory, "projections.npz"), buf.getvalue())
  artifacts.write_manifest(directory, KIND, **expected, K=K, dim=int(proj_PX.shape[1]),
                           counts={"problems": len(ids), "without_sequence": len(picked) - len(ids)},
                           checksums={f: artifacts.sha256_file(os.path.join(directory, f))
                                      for f in ("snr.csv", "snr.png", SUMMARY, "projections.npz")})
  return directory
