"""The passkey-retrieval task, the trained passkey model and its demo (`infini demo`, part 1).

    data.py      the task generator (lazy, any length): documents with a 5-digit passkey at a depth
    model.py     config, checkpoint I/O (``checkpoints/passkey_{linear,delta}.safetensors``, package data),
                 the memory-off control, gate values, state size
    exported.py  export a checkpoint to ONNX, checked against the reference and PyTorch
    demo.py      `run_demo`: one document streamed through ONNX Runtime, the answer decoded

They live in the package so that `infini demo` runs from an installed wheel; training, evaluation
and the plots are the example in the source checkout (examples/passkey/), which imports these.
"""
