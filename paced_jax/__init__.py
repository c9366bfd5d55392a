"""paced_jax: PACED (pass-rate weighted) distillation of language models in JAX / Flax NNX.

The packages mirror the stages (DESIGN.md section 9). Imports flow one way: a module may import
from its own package and from the units listed *below* its own in LAYERS, never from above
(tests/test_layout.py checks this, function-level imports included, and that there is no cycle).

  tools/       thin absl mains, one per stage
  pipeline.py  every stage in order;  aot.py, aot_decode.py  ahead-of-time compiles (train, decode step)
  lab/         the synthetic method lab (bootstrap, runner, report)
  analysis/    after training: gradient-SNR diagnostic, the report
  training/    losses (the divergence registry), train step, weights, packing, data, trainer
  teacher/     reference generation, the top-k teacher store
  evaluation/  the verifier, sample-and-grade, pass rates, benchmarks, retain, evaluation
  sampling/    the jitted sampler and its decoding layout
  problems/    problem records, files and built-in generators, the prepare stage, prompts
  model/       decoder, checkpoints (HF, GGUF, tiny), tokenizer, scoring and packing of sequences
  config.py  config_dict.py  workspace.py  mesh.py  artifacts.py  progress.py  host_memory.py
               settings, their reading from ConfigDicts, artifact paths, mesh, atomic files,
               progress bars and stage timing, the host heap

Axis legend (shape suffixes on array names, e.g. `logits_BTV`), one meaning per letter:
  B  batch rows                      T  token positions of a row (queries; new tokens when decoding)
  S  key / KV-cache positions        C  a chunk of T
  D  model dim                       F  MLP hidden dim            V  vocabulary (logit) rows
  L  layers                          H  query heads               J  KV heads
  G  query heads per KV head (H = J G)                            Dh head dim
  K  teacher top-k                   N  buckets = K + 1 (the top-k ids, then the tail)
  E  packed sequences (examples) per row                          M  micro-batches
  P  problems                        R  rollouts per problem (the paper's K)
  A  pass-rate buckets (A = R + 1: correct counts 0..R)           X  projected gradient dims
  U  rows (prompts) being refilled   W  prompt (bucket) length
  Q  KV-cache pages (paged cache)     Y  slots per page
  Z  keys and values of the KV heads interleaved (Z = 2 J: head j's key at 2 j, value at 2 j + 1)
  I  positions a row is read at (retain scoring)
"""

__version__ = "0.1.0"

# Lowest first. A unit is a subpackage or a top-level module (the base layer's names).
LAYERS = (
    ("artifacts", "config", "config_dict", "host_memory", "mesh", "progress", "workspace"),
    ("model",),
    ("problems",),
    ("sampling",),
    ("evaluation",),
    ("teacher",),
    ("training",),
    ("analysis",),
    ("lab",),
    ("pipeline", "aot", "aot_decode", "presets"),
    ("tools",),
)
