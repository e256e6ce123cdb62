"""A process that runs one work queue on an index (``python -m tests.workqueue_child DB MODE MARKER [N]``).

DB is a SQLite file or a ``postgresql://`` URL. Used by ``test_workqueue.py`` to kill a queue with
SIGKILL while an item runs. MODE ``hang``: the handler touches MARKER and never returns; MODE
``finish``: it records its attempt in MARKER and is done. The process exits once the row has ended
(or runs until killed). MODE ``drain`` (``test_workqueue_cluster.py``): N items ``item-0`` ...
are enqueued (idempotently: every consumer enqueues the same ones) and each run appends
``ref pid attempt`` to MARKER; the process exits once all N have ended.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from dicom_node.index import Index, IndexWriter
from dicom_node.index import work as ops
from dicom_node.workqueue import Done, Outcome, WorkItem, WorkQueue


class Child:
    def __init__(self, mode: str, marker: Path) -> None:
        self.mode, self.marker = mode, marker
        self.gave_up = threading.Event()

    def handle(self, item: WorkItem) -> Outcome:
        if self.mode == "drain":
            with self.marker.open("a") as out:  # O_APPEND: lines of several processes never interleave
                out.write(f"{item.ref} {os.getpid()} {item.attempts}\n")
            time.sleep(0.01)
            return Done()
        self.marker.write_text(f"{item.attempts}\n")
        if self.mode == "hang":
            threading.Event().wait()
        return Done()

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        self.marker.write_text(f"gave up: {reason}\n")
        self.gave_up.set()


def main() -> None:
    db, mode, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    refs = [f"item-{n}" for n in range(int(sys.argv[4]))] if mode == "drain" else ["item-1"]
    index = Index(db)
    writer = IndexWriter(db)
    writer.start()
    # drain: a long lease, so a renewal delayed by a loaded machine cannot let the other consumer
    # legitimately take a live item again (that is lease expiry, not a double claim).
    queue = WorkQueue(writer, poll_interval=0.05, lease=30.0 if mode == "drain" else 2.0)
    child = Child(mode, marker)
    queue.register("slow", child, limit=2 if mode == "drain" else 1, max_attempts=3)
    for ref in refs:
        queue.enqueue("slow", ref)
    queue.start()
    while True:
        conn = index.reader()
        try:
            rows = [ops.get(conn, "slow", ref) for ref in refs]
        finally:
            conn.close()
        if all(row is not None and row.state in ops.TERMINAL for row in rows):
            break
        time.sleep(0.05)
    queue.stop()
    writer.stop()
    index.close()


if __name__ == "__main__":
    main()
