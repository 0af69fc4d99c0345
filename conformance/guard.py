"""Calling the implementation: a per-call time limit, and whatever it raises turned into a Failure.

Every call into an implementation (``make``, ``forward``, ``grad``) goes through :func:`call`:

- it runs under a time limit (``--call-timeout``, default :data:`DEFAULT_CALL_TIMEOUT` seconds): a
  SIGALRM timer raises :class:`_Alarm` inside the implementation (a ``BaseException``, so an
  ``except Exception`` in their code cannot swallow it; it is re-raised every second until the call
  gives up), and the call becomes a :class:`Hung` failure naming the call;
- anything it raises, ``SystemExit``, ``KeyboardInterrupt`` and other ``BaseException`` subclasses
  included, becomes a :class:`Failure` naming the call and where it was raised. Only the user's own
  Ctrl-C stops the suite: :func:`user_interrupts` records a real SIGINT before raising, so a
  ``KeyboardInterrupt`` the implementation raises by itself is told apart.

Why not a worker process for every call: the suite makes thousands of small calls whose states must
stay live objects of the implementation (tensors, caches, its own classes), and shipping each call to
another process would cost more than the calls and demand picklable states. What an in-process guard
cannot stop (a segfault, ``os._exit``, a native loop that never returns to Python) is handled one
level up: ``infini conformance`` runs the whole suite in a supervised child process (``supervise.py``)
that the parent kills and restarts at the next property, reporting the property and the call. The
child publishes the call in flight and its deadline through :func:`set_monitor`.
"""
from __future__ import annotations

import signal
import threading
import time
import traceback
from contextlib import contextmanager

from .contract import NotSupported

DEFAULT_CALL_TIMEOUT = 60.0


class Failure(AssertionError):
    """A property does not hold; ``score`` is the error in units of the tolerance when one was measured."""

    def __init__(self, message: str, score: float = float("inf")):
        super().__init__(message)
        self.score = score


class Hung(Failure):
    """A call that did not return within the time limit."""


class Unsupported(Exception):
    """The implementation raised NotSupported for this example (the runner rejects it)."""


class _Alarm(BaseException):
    """Raised inside a call that ran past its time limit."""


_state = {"limit": DEFAULT_CALL_TIMEOUT, "user_sigint": False, "monitor": None, "depth": 0}


def set_call_timeout(seconds: float | None) -> None:
    """The per-call limit for the calls that follow (None or 0: no limit)."""
    _state["limit"] = float(seconds) if seconds else 0.0


def call_timeout() -> float:
    return _state["limit"]


def set_monitor(monitor) -> None:
    """An object with ``begin(what, deadline)`` / ``end()`` told about every call (the supervisor's)."""
    _state["monitor"] = monitor


@contextmanager
def user_interrupts():
    """Within it, a SIGINT (the user's Ctrl-C) is recorded before KeyboardInterrupt is raised."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        _state["user_sigint"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _alarm(signum, frame):
    raise _Alarm()


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    return f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""


def call(fn, *args, what: str):
    """``fn(*args)`` under the time limit; NotSupported -> Unsupported, a hang -> Hung, anything else raised
    (any BaseException but the user's Ctrl-C) -> Failure naming ``what``."""
    limit = _state["limit"]
    timed = limit > 0 and _state["depth"] == 0 and threading.current_thread() is threading.main_thread()
    monitor = _state["monitor"]
    previous = None
    if timed:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit, 1.0)
    if monitor is not None:
        monitor.begin(what, time.time() + limit if limit > 0 else 0.0)
    _state["depth"] += 1
    try:
        try:
            return fn(*args)
        finally:
            if timed:  # disarm first: an alarm between the return and here still reads as a hang
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _Alarm:
        raise Hung(f"{what} did not return within {limit:g} s (the per-call time limit, --call-timeout)") from None
    except NotSupported as exc:
        raise Unsupported(str(exc)) from None
    except KeyboardInterrupt as exc:
        if _state["user_sigint"]:
            raise
        raise Failure(f"{what} raised KeyboardInterrupt{': ' + str(exc) if str(exc) else ''}{_where(exc)} "
                      f"(raised by the implementation, not a Ctrl-C)") from None
    except (Failure, Unsupported):
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit, GeneratorExit, ... are the implementation's fault
        raise Failure(f"{what} raised {type(exc).__name__}: {exc}{_where(exc)}") from None
    finally:
        _state["depth"] -= 1
        if timed:
            signal.signal(signal.SIGALRM, previous)
        if monitor is not None:
            monitor.end()
