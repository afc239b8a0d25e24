"""Training, evaluation and ONNX export of seqserve's models (needs torch; service/ never imports it)."""
