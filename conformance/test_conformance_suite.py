"""The conformance properties as pytest tests (run with ``pytest --pyargs infini_attention.conformance
--infini-impl=...``; see ``pytest_plugin``). Without ``--infini-impl`` every test is skipped."""
import pytest

from infini_attention.conformance.properties import PROPERTIES


@pytest.mark.infini_conformance
@pytest.mark.parametrize("name", list(PROPERTIES))
def test_property(name, infini_conformance):
    infini_conformance.check(name)
