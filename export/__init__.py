"""Training, evaluation and ONNX export of seqserve's models (needs torch; service/ never imports it)."""

import service  # noqa: F401  (ONNX Runtime's telemetry opt-out, set before export/ imports it)
