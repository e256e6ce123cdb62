"""A process that runs one work queue on an index (``python -m tests.workqueue_child DB MODE MARKER``).

Used by ``test_workqueue.py`` to kill a queue with SIGKILL while an item runs. MODE ``hang``: the
handler touches MARKER and never returns; MODE ``finish``: it records its attempt in MARKER and is
done. The process exits once the row has ended (or runs until killed).
"""

from __future__ import annotations

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
        self.marker.write_text(f"{item.attempts}\n")
        if self.mode == "hang":
            threading.Event().wait()
        return Done()

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        self.marker.write_text(f"gave up: {reason}\n")
        self.gave_up.set()


def main() -> None:
    db, mode, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    index = Index(db)
    writer = IndexWriter(db)
    writer.start()
    queue = WorkQueue(writer, poll_interval=0.05, lease=2.0)
    child = Child(mode, marker)
    queue.register("slow", child, limit=1, max_attempts=3)
    queue.enqueue("slow", "item-1")
    queue.start()
    while True:
        conn = index.reader()
        try:
            row = ops.get(conn, "slow", "item-1")
        finally:
            conn.close()
        if row is not None and row.state in ops.TERMINAL:
            break
        time.sleep(0.05)
    queue.stop()
    writer.stop()


if __name__ == "__main__":
    main()
