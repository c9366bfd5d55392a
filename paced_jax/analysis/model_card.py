"""The model card (README.md) an exported checkpoint carries: base model, method, settings, eval results."""

from __future__ import annotations

import dataclasses
import json
import os

from paced_jax import artifacts, workspace
from paced_jax.config import ExperimentConfig

TRACKS = {
    "distill": "distillation from a separate teacher on its reference solutions",
    "self_distill": "self-distillation: the initial student, shown privileged context, is the teacher",
    "two_stage": "two stages: forward KL on teacher references, then the configured divergence on-policy",
}


def _weights(cfg: ExperimentConfig) -> str:
  w = cfg.weights
  if w.scheme == "paced":
    k = cfg.pass_rate.sampling.num_samples
    return f"PACED, w(p) = p^{w.alpha:g} (1-p)^{w.beta:g} (p: the student's pass rate from {k} rollouts)"
  return w.scheme


def eval_rows(workdir: str) -> list[tuple[str, str, str, str, str]]:
  """(tag, model, benchmark, mean@k +- SE, greedy) for every evaluation under WORKDIR/eval/."""
  root = workspace.eval_root(workdir)
  rows = []
  for tag in sorted(os.listdir(root)) if os.path.isdir(root) else ():
    path = os.path.join(root, tag, artifacts.MANIFEST)
    if not os.path.exists(path):
      continue
    manifest = artifacts.read_json(path)
    model = str(manifest.get("model_fingerprint", "")).rpartition("@")[2] or "-"
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"
    for name, s in sorted(manifest.get("benchmarks", {}).items()):
      rows.append((tag, model if model.startswith("step") else "initial weights", name,
                   f"{pct(s.get('accuracy'))} ± {pct(s.get('se'))} (k={s.get('k')}, n={s.get('n_problems')})",
                   pct(s.get("greedy_pass1"))))
  return rows


def model_card(cfg: ExperimentConfig, step: int, dtype: str) -> str:
  """Markdown with the hub's metadata header; evaluation rows are the workspace's, each with the
  model state it measured (a tag evaluated at another step is labelled so)."""
  t = cfg.train
  base = cfg.student
  hub_id = "/" in base and not os.path.isabs(base) and not base.startswith(".")  # the hub links base_model ids only
  lines = ["---"] + ([f"base_model: {base}"] if hub_id else []) + [
           "library_name: transformers", "tags: [paced-jax, distillation, math]", "---", "",
           f"# {os.path.basename(base.rstrip('/'))}, PACED-distilled (step {step}, {dtype})", "",
           f"- Base model (student): `{base}`",
           f"- Teacher: `{cfg.teacher or cfg.student + ' (initial weights, self-distillation)'}`",
           f"- Method: {TRACKS.get(cfg.track, cfg.track)}; divergence `{t.loss}`"
           + (f" {json.dumps(t.loss_params[t.loss])}" if t.loss_params.get(t.loss) else "") + ".",
           f"- Problem weights: {_weights(cfg)}.",
           f"- Training: {t.steps} steps planned, this export is step {step}; batch {t.batch_size} problems, "
           f"sequence length {t.seq_len}, lr {t.lr:g} ({t.schedule}), weight decay {t.weight_decay:g}.",
           f"- Problems: `{cfg.problems.source}` ({cfg.problems.n_train} train, {cfg.problems.n_heldout} held out).",
           "- Trained with paced-jax; method: PACED, pass-rate weighted distillation (arXiv 2603.11178).",
           "", "## Evaluation", ""]
  rows = eval_rows(cfg.workdir)
  if rows:
    lines += ["| eval tag | model | benchmark | mean@k ± SE (%) | greedy (%) |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
  else:
    lines.append("No evaluation results in the workspace (run `python -m paced_jax.tools.evaluate`).")
  settings = json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True, default=str)
  lines += ["", "## Full settings", "", "<details><summary>config</summary>", "", "```json", settings, "```", "",
            "</details>", ""]
  return "\n".join(lines)
