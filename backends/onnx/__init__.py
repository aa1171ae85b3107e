"""The ONNX Runtime runtime: decoder graphs exported from the torch model with a KV cache
(export, graph, patches) and run by onnxruntime (backend); text encoders and vision
towers (encoder)."""
