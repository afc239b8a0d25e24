"""seqserve: an inference service for recurrent sequence models over ONNX Runtime."""
