"""A stopped worker ends in bounded time: faust's consumer thread gets the session timeout
plus 5 s to stop instead of mode's 60 s, and a thread still stuck after that does not keep
the process alive (`leave_past_stuck_threads`, run in a child process as it may end it)."""

import subprocess
import sys
import textwrap

from service.config import Settings
from service.controlplane.app import create_app

SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading
    from service.cli.worker import leave_past_stuck_threads

    logging.basicConfig(level=logging.INFO)
    if sys.argv[1] == "stuck":
        threading.Thread(target=threading.Event().wait, name="blocked-client").start()
    else:
        threading.Thread(target=lambda: None, name="finished").start()
    leave_past_stuck_threads(3, 0.5)
    print("returned", flush=True)
    """
)


def run(case: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, timeout=60
    )


def test_a_thread_still_blocked_after_the_grace_period_does_not_keep_the_process_alive() -> None:
    done = run("stuck")
    assert done.returncode == 3  # the worker's own exit code, not a hang
    assert "returned" not in done.stdout
    assert "threads ['blocked-client'] did not stop within 0.5 s; exiting anyway" in done.stderr


def test_a_worker_whose_threads_all_ended_returns_normally() -> None:
    done = run("finished")
    assert (done.returncode, done.stdout) == (0, "returned\n")
    assert "did not stop" not in done.stderr


async def test_stopping_fausts_consumer_thread_is_bounded_by_the_session_timeout() -> None:
    app = create_app(Settings(session_timeout=7))
    assert app.consumer._thread.shutdown_timeout == 12.0  # type: ignore[attr-defined]
