"""Micro-batcher: batches from concurrent callers, order, delay, per-item error isolation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from models.reference import body_mask, dice, phantom

from inference.backends import BackendOptions
from inference.batching import MicroBatcher
from inference.errors import BackendError, InputError
from inference.predictor import open_predictor
from inference.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """A real batch function (doubles its input) that records the batches it saw and the thread it ran on."""

    def __init__(self, fail_on_negative: bool = False, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.fail_on_negative = fail_on_negative
        self.delay_s = delay_s

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(batch.shape[0])
        self.threads.add(threading.current_thread().name)
        if self.fail_on_negative and (batch < 0).any():
            raise BackendError("negative input")
        time.sleep(self.delay_s)
        return {"y": batch * 2}


def test_concurrent_items_share_batches_and_keep_order() -> None:
    run = Recorder(delay_s=0.002)
    batcher = MicroBatcher(run, max_batch=8, max_delay_s=0.02, name="t")
    try:
        def job(j: int) -> list[float]:
            futures = batcher.submit_many(np.full((1, 2), j * 100 + i, dtype=np.float32) for i in range(10))
            return [float(f.result()["y"][0, 0]) for f in futures]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(job, range(8)))
        stats = batcher.stats()
    finally:
        batcher.close()
    for j, values in enumerate(results):
        assert values == [2.0 * (j * 100 + i) for i in range(10)]
    assert stats.items == 80 and sum(run.batches) == 80
    assert max(run.batches) <= 8
    assert stats.fill_ratio > 0.5, f"8 concurrent jobs should fill batches, got {run.batches}"
    assert run.threads == {"batcher-t"}, "inference runs off the callers' threads"


def test_first_item_waits_at_most_about_max_delay() -> None:
    batcher = MicroBatcher(Recorder(), max_batch=32, max_delay_s=0.05, name="delay")
    try:
        t0 = time.perf_counter()
        batcher.submit(np.zeros(3, dtype=np.float32)).result(timeout=5)
        waited = time.perf_counter() - t0
    finally:
        batcher.close()
    assert 0.04 <= waited < 1.0


def test_full_batch_does_not_wait_for_the_delay() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=4, max_delay_s=5.0, name="full")
    try:
        t0 = time.perf_counter()
        futures = batcher.submit_many(np.zeros(2, dtype=np.float32) for _ in range(4))
        for f in futures:
            f.result(timeout=5)
    finally:
        batcher.close()
    assert time.perf_counter() - t0 < 2.0
    assert run.batches == [4]


def test_one_bad_item_fails_alone() -> None:
    run = Recorder(fail_on_negative=True)
    batcher = MicroBatcher(run, max_batch=8, max_delay_s=0.05, name="iso")
    try:
        items = [np.full(2, -1.0 if i == 3 else float(i), dtype=np.float32) for i in range(6)]
        futures = batcher.submit_many(items)
        for i, f in enumerate(futures):
            if i == 3:
                with pytest.raises(BackendError, match="negative"):
                    f.result(timeout=5)
            else:
                assert f.result(timeout=5)["y"][0] == 2.0 * i
        stats = batcher.stats()
    finally:
        batcher.close()
    assert run.batches[0] == 6, "the items were first tried as one batch"
    assert stats.failed_items == 1 and stats.items == 5


def test_items_of_different_shapes_are_batched_separately() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=8, max_delay_s=0.05, name="shapes")
    try:
        futures = batcher.submit_many([np.ones((2, 2), np.float32), np.ones((3, 3), np.float32), np.ones((2, 2), np.float32)])
        shapes = [f.result(timeout=5)["y"].shape for f in futures]
    finally:
        batcher.close()
    assert shapes == [(2, 2), (3, 3), (2, 2)]
    assert sorted(run.batches) == [1, 2]


def test_validation_and_closed_batcher_fail_the_item() -> None:
    def validate(item: np.ndarray) -> None:
        if item.ndim != 1:
            raise InputError("want 1-D")

    batcher = MicroBatcher(Recorder(), max_batch=2, max_delay_s=0.0, name="v", validate=validate)
    with pytest.raises(InputError):
        batcher.submit(np.zeros((2, 2), np.float32)).result(timeout=5)
    assert batcher.submit(np.zeros(2, np.float32)).result(timeout=5)["y"].shape == (2,)
    batcher.close()
    with pytest.raises(BackendError, match="closed"):
        batcher.submit(np.zeros(2, np.float32)).result(timeout=5)


def test_predictor_concurrent_jobs_on_onnxruntime() -> None:
    """Eight jobs predict at once through one ct-body predictor; each gets its own correct mask."""
    entry = ModelStore([ROOT / "engines"]).get("ct-body")
    predictor = open_predictor(entry, BackendOptions(onnxruntime_threads=1), ["onnxruntime"], max_delay_s=0.01)
    volumes = [phantom(slices=4, rows=64, cols=64, seed=s) for s in range(8)]
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(predictor.predict, volumes))
        stats = predictor.stats()
    finally:
        predictor.close()
    for vol, pred in zip(volumes, results, strict=False):
        assert dice(pred.result[:, 0], body_mask(vol)) >= 0.99
    assert stats.items == 32
    assert stats.batches < 32, f"items from different jobs must share batches: {stats.sizes}"
    wrong = open_predictor(entry, BackendOptions(), ["onnxruntime"])
    try:
        with pytest.raises(InputError, match="volume"):
            wrong.predict(np.zeros((4, 4), np.float32))
    finally:
        wrong.close()


def test_stack_views_avoids_copies_only_when_safe() -> None:
    from inference.batching import stack_views

    base = np.arange(24, dtype=np.float32).reshape(4, 1, 6)
    views = [base[i : i + 1][0] for i in range(4)]
    stacked = stack_views(views)
    assert np.shares_memory(stacked, base) and np.array_equal(stacked, base)
    part = stack_views([base[1], base[2]])
    assert np.shares_memory(part, base) and np.array_equal(part, base[1:3])
    gap = stack_views([base[0], base[2]])
    assert not np.shares_memory(gap, base) and np.array_equal(gap, base[[0, 2]])
    strided = base[:, :, ::2]
    odd = stack_views([strided[0], strided[1]])
    assert np.array_equal(odd, strided[:2])
    mixed = stack_views([np.ones((1, 6), np.float32), base[1]])
    assert np.array_equal(mixed[1], base[1])
