"""INT8 quantization backends (ONNX QDQ, OpenVINO via NNCF, ExecuTorch PT2E), all calibrated on
paired multimodal samples from the data adapter."""
