"""Pauses of the cyclic garbage collector overlap (the prefetch thread parses a page while
the main thread writes the one before; `serve` runs several syncs): collection resumes
only when the last one ends, and only if it was on before the first."""

import gc
import threading

import pytest

from connector_runtime.collector import gc_paused


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_overlapping_pauses_resume_collection_when_the_last_ends(collector_on):
    first_in, second_done = threading.Event(), threading.Event()
    seen = {}

    def other_thread():
        with gc_paused():
            first_in.set()
            second_done.wait(timeout=30)
            seen["inside other, after main's pause ended"] = gc.isenabled()
        seen["after both"] = gc.isenabled()

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert first_in.wait(timeout=30)
    with gc_paused():
        seen["inside both"] = gc.isenabled()
    seen["main's pause ended, other's not"] = gc.isenabled()
    second_done.set()
    thread.join(timeout=30)
    assert seen == {
        "inside both": False,
        "main's pause ended, other's not": False,
        "inside other, after main's pause ended": False,
        "after both": True,
    }


def test_a_collector_that_was_off_stays_off():
    was = gc.isenabled()
    gc.disable()
    try:
        with gc_paused(), gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()


def test_a_pause_ended_by_an_exception_still_resumes(collector_on):
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("page failed")
    assert gc.isenabled()
