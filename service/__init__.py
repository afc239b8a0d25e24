"""seqserve: an inference service for recurrent sequence models over ONNX Runtime."""

import os

__version__ = "0.1.0"

# ONNX Runtime (1.29 on) sends usage telemetry from Linux too, to mobile.events.data.microsoft.com
# (seen under strace: DNS lookups from the server's threads). A server sends nothing anywhere
# it was not asked to; this is ONNX Runtime's own opt-out, read once when it initialises, so it is
# set here, before any part of the service imports it. An operator's own setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
