"""Command-line tools: thin absl mains, one per stage.

Every main imports this package first, so this is the one place that quiets advice meant for other
setups before any library prints it: transformers warns on import that PyTorch is missing, which
the runtime virtualenv never installs (JAX does the modelling; only the tests use torch).
"""

import os

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
