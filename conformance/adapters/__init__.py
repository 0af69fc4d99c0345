"""Bundled adapters (each ``module:make`` is a valid ``--impl``): the reference, the PyTorch
implementation, ONNX files, and the third-party ``infini-transformer-pytorch``."""
