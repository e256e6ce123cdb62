"""Durable jobs: one per (completed series, model), run through validate -> decode -> infer -> write -> deliver.

Jobs live in the SQLite index (table ``jobs``) and every state change goes
through the index writer, so a ``kill -9`` at any stage loses no job: on start,
jobs caught mid-stage go back to ``queued`` and run again with the same result
UIDs; jobs caught while delivering resume delivery, which never re-sends an
object a destination already took.
"""
