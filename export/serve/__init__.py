"""Serving many streams: a Triton Inference Server model repository from an exported model (`infini serve triton`)."""
