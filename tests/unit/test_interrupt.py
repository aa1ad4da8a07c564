"""Ctrl-C that lands inside a weakref callback still ends the job with the one line."""

import signal
import time
import weakref

from dcssl.interrupt import run_interruptible


class _Thing:
    pass


def _main_whose_ctrl_c_lands_in_a_callback() -> int:
    thing = _Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
    del thing  # the callback runs here: Python would swallow the KeyboardInterrupt raised in it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the main code goes on; the interrupt must reach it
        sum(range(1000))
    return 0 if ref() is None else 1


def test_ctrl_c_inside_a_weakref_callback_still_interrupts(capsys):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert run_interruptible(_main_whose_ctrl_c_lands_in_a_callback, "dcssl.train") == 130
    err = capsys.readouterr().err
    assert "interrupted; resume with:" in err
    assert "Exception ignored" not in err and "Traceback" not in err
