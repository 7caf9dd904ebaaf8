"""What the asyncio tests (test_aio.py, test_aio_recipes.py) share: the loop_kind fixture
(asyncio's loop and uvloop), run() on a fresh loop that fails on any logged error, and the
manager's clock grain."""
from __future__ import annotations

import asyncio

import pytest

LOOPS = ("asyncio", "uvloop")
# The manager keeps time in whole milliseconds with the clock reading rounded down, so a
# deadline can pass up to one millisecond before its exact time (seconds).
CLOCK_GRAIN = 0.001


@pytest.fixture(params=LOOPS)
def loop_kind(request) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return request.param


def _warm_uvloop() -> None:
    """libuv opens a process-wide pipe with the first loop that runs; open it now, before
    the fd-leak guard of any test takes its snapshot."""
    try:
        import uvloop
    except ImportError:
        return
    loop = uvloop.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


_warm_uvloop()


def run(loop_kind: str, main, timeout: float = 60.0):
    """Run ``main()`` on a fresh loop of the given kind with an exception handler that
    records; fail when anything was logged."""
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        result = loop.run_until_complete(asyncio.wait_for(main(), timeout))
        loop.run_until_complete(asyncio.sleep(0.01))  # let closing transports finish (a few loop iterations)
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert errors == [], f"the loop logged errors: {errors}"
    return result
