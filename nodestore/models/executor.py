"""Executors: ``map(fn, items, progress=True) -> list`` in order.

``LocalExecutor`` runs in this process (``processes=1``) or a process pool
whose size respects ``processes x torch_threads <= cores``;
``DaskExecutor`` sends the work to a Dask distributed scheduler
(``tcp://host:8786``) or to a given ``Client``/``LocalCluster``.  Long work
shows a tqdm progress bar.  ``fn`` and items must pickle for pools and Dask.

A worker that dies (killed, out of memory, its node gone) loses only the items it was running.
On Dask the scheduler runs them again on another worker (up to its
``distributed.scheduler.allowed-failures``, 3 by default); an item still without a result then
runs once more alone, since the scheduler also blames the items that merely shared the dying
worker. One that loses its worker alone too, or that a broken local pool never ran, gets
``on_lost(item, exc)`` as its result when the caller gave one (the labeller records a failure),
else the map raises a BackendError.
"""

from __future__ import annotations

import abc
import os
from typing import Callable, ClassVar, Sequence

from nodestore.errors import BackendError, ValidationError


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _init_worker(threads: int) -> None:
    from nodestore.models._allocator import tune_allocator

    tune_allocator()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="item")


class Executor(abc.ABC):
    backend: ClassVar[str] = ""

    @abc.abstractmethod
    def map(self, fn: Callable, items: Sequence, progress: bool = True, io_bound: bool = False,
            on_lost: Callable | None = None, cores_per_item: int = 1) -> list:
        """``[fn(x) for x in items]``, possibly in parallel; results in input order.

        ``io_bound``: ``fn`` spends its time waiting (on a worker process of its own, such as a
        first-principles code), so threads of this process may run several at once:
        ``cores // cores_per_item`` of them (``cores_per_item``: the cores each item's worker
        takes, e.g. its MPI ranks).
        ``on_lost(item, exc)``: the result of an item whose worker was lost (see the module doc).
        """

    def close(self) -> None:
        """Release workers/clients this executor created."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """Process pool on this machine (serial in-process when ``processes == 1``).

    ``processes`` defaults to ``cores // torch_threads``; asking for more than
    the cores allow is a ValidationError (two torch processes with two
    threads each on two cores stall).
    """

    backend = "local"

    def __init__(self, processes: int | None = None, torch_threads: int = 1, desc: str = "work"):
        cores = cpu_count()
        torch_threads = max(1, int(torch_threads))
        if processes is None:
            processes = max(1, cores // torch_threads)
        processes = int(processes)
        if processes < 1:
            raise ValidationError("processes must be >= 1")
        if processes > 1 and processes * torch_threads > cores:
            raise ValidationError(f"{processes} processes x {torch_threads} torch threads > {cores} cores")
        self.processes, self.torch_threads, self.desc = processes, torch_threads, desc

    def map(self, fn, items, progress=True, io_bound=False, on_lost=None, cores_per_item=1):
        items = list(items)
        bar = _progress(len(items), progress and len(items) > 1, self.desc)
        at_once = min(max(1, cpu_count() // max(1, int(cores_per_item))), len(items))
        try:
            if io_bound and at_once > 1:
                # each call waits on a worker process of its own that takes cores_per_item cores
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(at_once) as pool:
                    futures = [pool.submit(fn, x) for x in items]
                    return self._collect(futures, bar)
            if self.processes == 1 or len(items) <= 1 or io_bound:
                out = []
                for x in items:
                    out.append(fn(x))
                    if bar is not None:
                        bar.update(1)
                return out
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("spawn")  # torch is not fork-safe once threads started
            with ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_init_worker,
                                     initargs=(self.torch_threads,)) as pool:
                futures = [pool.submit(fn, x) for x in items]
                return self._collect(futures, bar, items, on_lost)
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _collect(futures, bar, items=None, on_lost=None) -> list:
        from concurrent.futures.process import BrokenProcessPool

        if bar is not None:
            for f in futures:
                f.add_done_callback(lambda _f: bar.update(1))
        out = []
        for i, f in enumerate(futures):
            try:
                out.append(f.result())
            except BrokenProcessPool as exc:  # a worker died: the items it and the pool still held
                if on_lost is None:
                    raise BackendError(f"a worker process died: {exc}") from None
                out.append(on_lost(items[i], exc))
        return out


class DaskExecutor(Executor):
    """Dask distributed: ``address`` is a scheduler (``tcp://...``), a ``Client``
    or a ``LocalCluster``."""

    backend = "dask"

    def __init__(self, address=None, desc: str = "work", **client_kwargs):
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover
            raise BackendError("the dask executor needs dask[distributed]") from exc
        self._own = False
        if isinstance(address, Client):
            self.client = address
        elif address is None or isinstance(address, str):
            if isinstance(address, str) and not address.startswith(("tcp://", "tls://", "inproc://", "ucx://", "ws://")):
                raise ValidationError(f"not a Dask scheduler address: {address!r} (expected tcp://host:port)")
            self.client = Client(address, **client_kwargs)
            self._own = True
        else:  # a cluster object
            self.client = Client(address, **client_kwargs)
            self._own = True
        self.desc = desc

    def map(self, fn, items, progress=True, io_bound=False, on_lost=None, cores_per_item=1):
        # the cluster's workers decide how many items run at once (their threads and resources)
        from distributed import as_completed

        items = list(items)
        if not items:
            return []
        futures = self.client.map(fn, items, pure=False)
        bar = _progress(len(items), progress and len(items) > 1, self.desc)
        try:
            for _ in as_completed(futures):
                if bar is not None:
                    bar.update(1)
            out, suspects = [], []
            for i, f in enumerate(futures):
                ok, value = self._outcome(f)
                out.append(value)
                if not ok:
                    suspects.append(i)
        finally:
            if bar is not None:
                bar.close()
            self.client.cancel(futures)
        # The scheduler blames every task a dying worker held, so an item that only shared a
        # worker with the one that killed it can run out of retries too. Each such item runs
        # again alone: only one that still loses its worker is lost.
        for i in suspects:
            f = self.client.submit(fn, items[i], pure=False)
            try:
                ok, value = self._outcome(f)
            finally:
                self.client.cancel([f])
            if ok:
                out[i] = value
            elif on_lost is None:
                raise BackendError(f"Dask lost the workers of an item, also when it ran alone: {value}")
            else:
                out[i] = on_lost(items[i], value)
        return out

    @staticmethod
    def _outcome(future) -> tuple[bool, object]:
        """``(True, result)``, or ``(False, exc)`` when the item's workers were lost (KilledWorker,
        or the future cancelled as the cluster lost them); the item's own errors raise."""
        from concurrent.futures import CancelledError

        from distributed.scheduler import KilledWorker

        try:
            return True, future.result()
        except (KilledWorker, CancelledError) as exc:
            return False, exc

    def close(self):
        if self._own:
            self.client.close()


def make_executor(spec=None, **config) -> Executor:
    """``None``/``"local"`` -> LocalExecutor; ``"tcp://..."`` or a Client -> DaskExecutor;
    an Executor passes through."""
    if isinstance(spec, Executor):
        return spec
    if spec is None or spec == "local":
        return LocalExecutor(**config)
    if spec == "dask":
        return DaskExecutor(**config)
    return DaskExecutor(spec, **config)
