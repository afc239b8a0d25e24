"""seqserve: an inference service for recurrent sequence models over ONNX Runtime."""

__version__ = "0.1.0"
