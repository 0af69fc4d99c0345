"""Running the suite in a supervised child process (``infini conformance``'s default, ``--isolate process``).

The per-call guard (``guard.py``) turns anything an implementation raises, and any hang Python can
interrupt, into a failure of the property, in-process and at no cost. What it cannot survive is a
crash of the process itself (a segfault in native code, ``os._exit``) or a native call that never
returns to Python. So ``infini conformance`` runs the properties (and the diagnosis) in a child
process that tells the parent, through shared memory, which call is in flight and its deadline: the
parent reports a child that dies or overstays a deadline by the grace period as a FAIL of that
property naming the call, and starts a fresh child at the next property. ``infini check`` runs the
bundled implementation in-process (``--isolate none``): it is trusted, and stays fast.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import time

from . import guard
from .runner import FAIL, Result

GRACE = 10.0  # seconds past a call's deadline before the parent gives up on a child stuck in native code
WHAT_BYTES = 512


class _Monitor:
    """The child's side: the call in flight and its deadline, in shared memory."""

    def __init__(self, what, deadline):
        self.what, self.deadline = what, deadline

    def begin(self, what: str, deadline: float) -> None:
        self.what.value = what.encode("utf-8", "replace")[:WHAT_BYTES - 1]
        self.deadline.value = deadline

    def end(self) -> None:
        self.deadline.value = 0.0


def _child(spec, settings, names, results, want_diagnosis, conn, what, deadline) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the user's Ctrl-C is the parent's to handle
    from .contract import load_impl
    from .properties import PROPERTIES
    from .runner import run_property

    impl = load_impl(spec)
    guard.set_monitor(_Monitor(what, deadline))
    results = list(results)
    for name in names:
        conn.send(("start", name))
        r = run_property(PROPERTIES[name], impl, settings)
        results.append(r)
        conn.send(("done", r))
    if want_diagnosis and any(r.verdict == FAIL for r in results):
        from .diagnosis import diagnose

        conn.send(("start", "diagnosis"))
        conn.send(("diagnosis", diagnose(impl, settings, results)))
    conn.send(("end", None))


def run_supervised(spec: str, settings, props, progress=None, want_diagnosis: bool = True):
    """(results, diagnosis or None, notes) of the properties ``props`` run in child processes."""
    ctx = mp.get_context("spawn")
    names, results, state = [p.name for p in props], [], {"diagnosis": None, "notes": []}
    by_name = {p.name: p for p in props}
    while True:
        todo = names[len(results):]
        wanted = want_diagnosis and any(r.verdict == FAIL for r in results)
        if not todo and (not wanted or state["diagnosis"] is not None or state["notes"]):
            return results, state["diagnosis"], state["notes"]
        what, deadline = ctx.Array("c", WHAT_BYTES), ctx.Value("d", 0.0)
        here, there = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child, args=(spec, settings, todo, results, want_diagnosis, there, what, deadline),
                            daemon=True)
        child.start()
        there.close()
        try:
            _watch(child, here, what, deadline, names, by_name, results, state, progress)
        finally:
            if child.is_alive():
                child.kill()
            child.join(5)
            here.close()


def _watch(child, here, what, deadline, names, by_name, results, state, progress) -> None:
    """Relay one child's messages until it ends, dies or overstays a deadline (then record a failure)."""
    current = None
    while True:
        message = None
        if here.poll(0.2):
            try:
                message = here.recv()
            except EOFError:
                message = None
            else:
                kind, value = message
                if kind == "start":
                    current = value
                    if progress and value in by_name:
                        progress(len(results), len(names), by_name[value], None)
                elif kind == "done":
                    results.append(value)
                    if progress:
                        progress(len(results) - 1, len(names), by_name[value.name], value)
                elif kind == "diagnosis":
                    state["diagnosis"] = value
                elif kind == "end":
                    return
                continue
        stuck = bool(deadline.value) and time.time() > deadline.value + GRACE
        if child.is_alive() and not stuck:
            continue
        call = what.value.decode("utf-8", "replace") or "the implementation"
        why = (f"did not return within {guard.call_timeout():g} s (+{GRACE:g} s grace) and could not be interrupted "
               f"(native code): the child process was killed" if stuck and child.is_alive()
               else f"crashed the suite's child process ({_exitcode(child)})")
        child.kill()
        text = f"{call} {why}; the suite went on in a fresh process"
        todo = names[len(results):]
        if todo:  # the property in flight (or the next one, if the child died before starting it) fails
            name = current if current in todo[:1] else todo[0]
            r = Result(name, by_name[name].spec, FAIL, message=text, doc=by_name[name].doc)
            results.append(r)
            if progress:
                progress(len(results) - 1, len(names), by_name[name], r)
        else:
            state["notes"].append(f"diagnosis not available: {text}")
        return


def _exitcode(child) -> str:
    child.join(1)
    code = child.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
