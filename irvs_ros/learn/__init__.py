"""Networks, losses, algorithms, trainer and ONNX export (torch)."""
