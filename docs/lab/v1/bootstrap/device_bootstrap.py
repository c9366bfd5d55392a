"""Bootstrap the lab's teacher and candidate students with the lab's own code and config; report
per-level pass rates of each; tar the models into $OUT.

As run on the H200 device machine for docs/lab (with the ml_collections wheel on PYTHONPATH):
  CANDS=250,500,1000,2000 ROOT=/tmp/boot python3 docs/lab/bootstrap/device_bootstrap.py
Training finished (device_run.log); the evaluation part then failed there (no `gguf` package for
loaded_model's import chain), so /tmp/boot was tarred by hand and the students were compared on
this machine's CPU instead (docs/lab/README.md).
"""
import collections, dataclasses, importlib.util, json, os, sys, tarfile, time
sys.path.insert(0, os.getcwd())
import jax, flax
print("jax", jax.__version__, "flax", flax.__version__, jax.devices(), flush=True)
import numpy as np
from paced_jax import config_dict, mesh as mesh_lib
from paced_jax.lab import bootstrap as lab_bootstrap
from paced_jax.lab import config as lab_config
from paced_jax.problems import lab_arithmetic as lab_tasks
from paced_jax.model import loaded as loaded_model
from paced_jax.problems import prompts as prompts_lib
from paced_jax.config import SamplingConfig
from paced_jax.sampling.sampler import Sampler
spec = importlib.util.spec_from_file_location("labcfg", "configs/lab.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
lab = config_dict.to_dataclass(lab_config.LabConfig, m.get_config(os.environ.get("VARIANT", "full")))
smoke = os.environ.get("BOOT_SMOKE") == "1"
cands = [int(x) for x in os.environ.get("CANDS", "250,500,1000,2000").split(",")]
root = os.environ.get("ROOT", "/tmp/boot")
out = os.environ.get("OUT", "/tmp/boot_out")
b = lab.bootstrap
if smoke:
  b = dataclasses.replace(b, teacher=dataclasses.replace(b.teacher, steps=4), log_every=2)
mesh = mesh_lib.make_mesh(lab.experiment.mesh)
prompts = lab_config.bootstrap_prompts(lab)
tic = time.time()
dirs = {"teacher": lab_bootstrap.ensure_model(f"{root}/models", "teacher", b.teacher, b, prompts, mesh, b.seed)}
print(f"teacher done {time.time() - tic:.0f}s", flush=True)
for n in cands:
  dirs[f"s{n}"] = lab_bootstrap.ensure_model(f"{root}/s{n}", "student", dataclasses.replace(b.student, steps=n),
                                             b, prompts, mesh, b.seed + 1)
  print(f"student s{n} done {time.time() - tic:.0f}s", flush=True)
p = lab.experiment.problems
train = lab_tasks.generate(p.n_train, p.seed, "train")
K = lab.experiment.pass_rate.sampling.num_samples
sc = dataclasses.replace(lab.experiment.pass_rate.sampling, batch_rows=512)
summary = {}
for name, d in dirs.items():
  model = loaded_model.load(d, mesh)
  tok = model.tokenizer
  roll = Sampler.for_model(model).generate([prompts_lib.student_prompt(tok, q, lab.experiment.prompts) for q in train], sc,
                                  progress=False)
  hist = collections.defaultdict(lambda: [0] * (K + 1))
  for q, rs in zip(train, roll):
    hist[q.level][sum(lab_tasks.grade(tok.decode(r.tokens, skip_special_tokens=True), q.answer) for r in rs)] += 1
  summary[name] = {str(k): v for k, v in sorted(hist.items())}
  means = {k: round(sum(c * x for c, x in enumerate(v)) / sum(v) / K, 3) for k, v in sorted(hist.items())}
  print(name, "mean p by level", means, flush=True)
  for k, v in sorted(hist.items()):
    print("   L", k, v, flush=True)
print(f"all done {time.time() - tic:.0f}s", flush=True)
os.makedirs(out, exist_ok=True)
json.dump(summary, open(f"{out}/hist.json", "w"), indent=1)
with tarfile.open(f"{out}/boot.tar", "w") as t:
  t.add(root, arcname="boot")
