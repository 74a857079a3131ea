"""Policy-file loading and the argmin optimizers (numpy + onnxruntime; never torch)."""
