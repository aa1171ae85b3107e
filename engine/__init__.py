"""specengine: declarative differential testing of model ports.

Importing this package must stay cheap: no torch, transformers or onnxruntime here.
"""

__version__ = "0.1.0"
