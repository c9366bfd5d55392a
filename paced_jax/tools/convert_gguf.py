"""Convert a llama GGUF file (default: the bundled demo model) into a Hugging Face directory.

  python -m paced_jax.tools.convert_gguf
  python -m paced_jax.tools.convert_gguf --gguf=model.Q8_0.gguf --out=/tmp/model-hf
"""

from __future__ import annotations

from absl import app
from absl import flags

from paced_jax.tools import flags as tool_flags

from paced_jax.model import gguf as gguf_import

_GGUF = flags.DEFINE_string(
    "gguf", None, f"GGUF file; default: {gguf_import.DEMO_MEMBER} from the {gguf_import.DEMO_REQUIREMENT} wheel.")
_OUT = flags.DEFINE_string(
    "out", None, f"Output directory; default: <$PACED_JAX_CACHE or ~/.cache/paced_jax>/{gguf_import.DEMO_HF_DIRNAME}.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    if _GGUF.value is None:
      out = gguf_import.ensure_demo_model(out_dir=_OUT.value)
    else:
      out = gguf_import.gguf_to_hf(_GGUF.value, _OUT.value or gguf_import.demo_model_dir())
  except (OSError, ValueError, gguf_import.DemoModelUnavailable) as e:  # the message names the file (and tensor)
    tool_flags.fail(f"convert_gguf: {e}")
  print(out)


if __name__ == "__main__":
  tool_flags.run(main)
