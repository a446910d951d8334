"""Pause points for the crash tests: ``NODESTORE_PAUSE_IN=<point>`` stops the process there.

The process writes its pid to ``NODESTORE_PAUSE_FILE`` and sleeps, so that a test can kill it
with SIGKILL at a known moment.  Unset (always, outside the tests), a pause point does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def pause(point: str) -> None:
    if os.environ.get("NODESTORE_PAUSE_IN") == point:
        Path(os.environ["NODESTORE_PAUSE_FILE"]).write_text(str(os.getpid()))
        time.sleep(600)
