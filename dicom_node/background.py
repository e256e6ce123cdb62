"""A named daemon thread that calls ``step()`` until stopped: the node's periodic scans.

Scans, not queued work: the assembler (series whose quiet period ended) and the job router
(completion events into jobs). Work itself (jobs, deliveries, ...) runs on the one work queue,
:mod:`dicom_node.workqueue`, which has its own worker threads, retries and crash recovery.
"""

from __future__ import annotations

import threading


class BackgroundLoop:
    """Run :meth:`step` in a thread, waiting ``interval`` seconds whenever it returns False.

    Parameters
    ----------
    name : str
        Thread name (shows in logs and profilers).
    interval : float
        Seconds to wait after an idle step.
    """

    def __init__(self, name: str, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end and wait for the current step to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def step(self) -> bool:
        """One unit of work; True when there may be more to do right away."""
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.step():
                self._stop.wait(self._interval)
