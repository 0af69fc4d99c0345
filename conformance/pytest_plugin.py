"""pytest plugin (entry point ``pytest11``): the conformance properties as pytest tests.

    pytest --pyargs infini_attention.conformance --infini-impl=my_pkg.infini_adapter:make \
        [--infini-profile=gate_on=local] [--infini-dtype=float32] [--infini-max-examples=N] \
        [--infini-seed=S] [--infini-thorough]

One test per property (``test_property[<name>]``): a failure prints the rule, the smallest failing
case and the Python that reproduces it; "not supported" and "n/a" are skips; "inconclusive" (fewer
than --infini-min-examples examples ran) fails, as it is no pass. Loaded in every pytest run of the
environment, so this module imports nothing heavy until the options are used.
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("infini", "Infini-attention conformance (SPEC.md)")
    group.addoption("--infini-impl", default=None, metavar="IMPL",
                    help="implementation to check: package.module:factory or a model.onnx file")
    group.addoption("--infini-profile", default=None, help="conventions, e.g. gate_on=local,first_segment=local_only")
    group.addoption("--infini-dtype", default="float32", help="dtype to check (default float32)")
    group.addoption("--infini-max-examples", type=int, default=None, help="Hypothesis examples per property")
    group.addoption("--infini-seed", type=int, default=0, help="Hypothesis seed (default 0)")
    group.addoption("--infini-thorough", action="store_true", help="go deep: 10x examples, longer streams")
    group.addoption("--infini-min-examples", type=int, default=10,
                    help="a property that ran fewer examples is inconclusive (a failure here; default 10)")


class ConformanceSession:
    """What the options resolve to: the loaded implementation and the suite settings."""

    def __init__(self, config):
        from .cli import resolve_examples, resolve_profile
        from .contract import DTYPES, UsageError, load_impl
        from .properties import Settings

        opt = config.getoption
        try:
            dtype = opt("--infini-dtype")
            if dtype not in DTYPES:
                raise UsageError(f"--infini-dtype: expected one of {DTYPES}, got {dtype!r}")
            thorough = opt("--infini-thorough")
            n = resolve_examples(opt("--infini-max-examples"), thorough, "--infini-max-examples")
            self.impl = load_impl(opt("--infini-impl"))
            if self.impl.outputs_dir is not None:
                raise UsageError("--infini-impl: a directory of outputs is graded by `infini vectors check`")
            profile = resolve_profile(opt("--infini-profile"), self.impl, "--infini-profile")
        except UsageError as exc:
            raise pytest.UsageError(str(exc).replace("--impl", "--infini-impl", 1)) from None
        self.settings = Settings(dtype=dtype, profile=profile, max_examples=n, seed=opt("--infini-seed"),
                                 thorough=thorough, min_examples=opt("--infini-min-examples"))

    def check(self, name: str) -> None:
        from .properties import PROPERTIES
        from .runner import ERROR, FAIL, INCONCLUSIVE, NOT_APPLICABLE, UNSUPPORTED, run_property

        r = run_property(PROPERTIES[name], self.impl, self.settings)
        if r.verdict in (UNSUPPORTED, NOT_APPLICABLE):
            pytest.skip(f"{r.verdict}: {r.message}")
        if r.verdict == INCONCLUSIVE:
            pytest.fail(f"{r.name} ({r.spec}) inconclusive, not passed: {r.message}", pytrace=False)
        if r.verdict in (FAIL, ERROR):
            ex = r.example or {}
            pytest.fail(f"{r.name} ({r.spec}) {r.verdict}: {r.doc}\n{r.message}\n"
                        f"smallest failing case: config {ex.get('config')} B={ex.get('B')} T={ex.get('T')} "
                        f"split={ex.get('split')}\nreproduce with:\n{r.repro}", pytrace=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "infini_conformance: a conformance property (SPEC.md)")
    if config.getoption("--infini-impl", default=None):
        config._infini_conformance = ConformanceSession(config)


def pytest_report_header(config):
    session = getattr(config, "_infini_conformance", None)
    if session is not None:
        from .report import header
        return header(session.impl, session.settings).splitlines()
    return None


@pytest.fixture(scope="session")
def infini_conformance(request):
    """The configured conformance session; skips when no --infini-impl was given."""
    session = getattr(request.config, "_infini_conformance", None)
    if session is None:
        pytest.skip("no implementation given: pass --infini-impl=package.module:factory (or model.onnx)")
    return session
