"""The Open Inference Protocol's gRPC messages and service (Triton's grpc_service.proto and
model_config.proto), as generated code.

Vendored unchanged from the tritonclient 2.73.0 wheel (tritonclient/grpc/service_pb2.py,
model_config_pb2.py, service_pb2_grpc.py; BSD-3-Clause, NVIDIA: LICENSE.txt beside this file)
except for their imports, which point here: the server then needs grpcio and protobuf but not the
client library. The generated code was made by protoc for protobuf 6.33.5 and grpcio-tools
1.81.1, hence the lower bounds in pyproject.toml (and protobuf < 7). To refresh, copy the files
from a newer tritonclient wheel and fix the two imports again.
"""
