"""The conformance suite: any Infini-attention implementation checked against SPEC.md, with a verdict.

Entry points: the ``infini`` command (``cli.py``), the pytest plugin (``pytest_plugin.py``), and
for adapters :class:`NotSupported` (see ``contract.py`` for the contract an adapter implements).
"""
from infini_attention.conformance.contract import NotSupported  # absolute: pytest --pyargs imports this file

__all__ = ["NotSupported"]
