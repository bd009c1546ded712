"""Chunk sizing from the device's free memory, the host check, and stitching chunk outputs."""

import numpy as np
import pytest

from stablesam_jax.utils import chunking
from stablesam_jax.utils.batching import bucket_chunks

BUCKETS = (1, 4, 16, 64, 256)
MIB = 2**20


class FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_free_device_memory_sets_the_budget_else_the_default():
    gpu = FakeDevice({"bytes_limit": 10 * 2**30, "bytes_in_use": 2 * 2**30})
    assert chunking.device_budget(gpu) == 4 * 2**30  # half of the 8 GiB free
    assert chunking.device_budget(FakeDevice(None)) == chunking.DEFAULT_DEVICE_BUDGET
    assert chunking.device_budget(FakeDevice({"num_allocs": 3})) == chunking.DEFAULT_DEVICE_BUDGET


def test_chunks_are_buckets_that_fit():
    # 100 MiB free per call, 1 MiB per prompt: 100 prompts fit.
    device = FakeDevice({"bytes_limit": 200 * MIB, "bytes_in_use": 0})
    assert chunking.chunk_rows(60, MIB, BUCKETS, device) == 60  # bucket 64 fits: one call
    assert chunking.chunk_rows(100, MIB, BUCKETS, device) == 64  # bucket 256 does not
    assert chunking.chunk_rows(100_000, MIB, BUCKETS, device) == 64
    big = FakeDevice({"bytes_limit": 2000 * MIB, "bytes_in_use": 0})  # 1000 fit
    assert chunking.chunk_rows(100_000, MIB, BUCKETS, big) == 768  # a multiple of 256
    tiny = FakeDevice({"bytes_limit": MIB, "bytes_in_use": 0})
    assert chunking.chunk_rows(10, MIB, BUCKETS, tiny) == 1  # never below the smallest bucket
    # Split over 8 devices, the budget is per device.
    assert chunking.chunk_rows(1000, 8 * MIB, (8,), device, multiple=8) == 96


def test_outputs_that_do_not_fit_the_host_are_refused_with_the_number_that_fits(monkeypatch):
    monkeypatch.setattr(chunking, "host_available", lambda: 1000 * MIB)
    chunking.check_host(800, MIB, "3 masks of 10x10")  # 800 MiB <= 80% of 1000 MiB
    with pytest.raises(MemoryError) as error:
        chunking.check_host(100_000, MIB, "3 masks of 512x512")
    message = str(error.value)
    assert "100000 prompts" in message and "3 masks of 512x512" in message
    assert "800 prompts fit in one call" in message and "at most 800 prompts" in message


def test_chunk_outputs_are_stitched_in_order():
    calls = []

    def fn(a, b, none, scale=1):
        calls.append(len(a))
        return a * scale, {"b": b + 1, "pair": (a, b)}

    a, b = np.arange(10), np.arange(10, 20).reshape(10, 1)
    out = chunking.run_in_chunks(fn, 10, 4, [a, b, None], scale=2)
    assert calls == [4, 4, 2]
    np.testing.assert_array_equal(out[0], a * 2)
    np.testing.assert_array_equal(out[1]["b"], b + 1)
    np.testing.assert_array_equal(out[1]["pair"][1], b)


def test_bucket_chunks_sum_to_n_without_padding():
    assert bucket_chunks(20, BUCKETS) == [16, 4]
    assert bucket_chunks(10, BUCKETS) == [4, 4, 1, 1]
    assert bucket_chunks(300, BUCKETS) == [256, 16, 16, 4, 4, 4]
    assert bucket_chunks(0, BUCKETS) == []
    assert bucket_chunks(5, (4, 16)) == [4, 1]  # no bucket of 1: the rest is one padded call
