"""How a model becomes a deployable file: the torch -> ONNX exporter (onnx.py), ExecuTorch's lowering
(executorch.py), the TensorRT bundle and its op checks (tensorrt.py, tensorrt_ops.py), and the parity check.
Which of them a format uses is the format's to say (edgekit/formats/)."""
