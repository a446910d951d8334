"""Kill a nodestore command with SIGKILL at a pause point (``nodestore.faults.pause``)."""

import os
import signal
import subprocess
import sys
import time


def ns(node_path, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "nodestore", "-C", str(node_path), *map(str, args)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def run(node_path, *args):
    p = ns(node_path, *args)
    out, _ = p.communicate(timeout=600)
    return p.returncode, out


def kill_at(node_path, point, *args, pause_file, timeout=240):
    """Run ``nodestore ARGS`` until it reaches pause point ``point``, then SIGKILL it."""
    pause_file.unlink(missing_ok=True)
    proc = ns(node_path, *args, env={"NODESTORE_PAUSE_IN": point, "NODESTORE_PAUSE_FILE": str(pause_file)})
    t0 = time.time()
    while not pause_file.exists():
        if proc.poll() is not None:
            raise AssertionError(f"pause point {point} never reached: {proc.stdout.read()}")
        assert time.time() - t0 < timeout, f"pause point {point} not reached in {timeout} s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
