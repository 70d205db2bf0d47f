"""Data-prep throughput (MB/s of input) with the byte-level and the GPT-2 tokenizer.

Run with `python -m pytest tests/benchmarks/test_bench_data_prep.py --benchmark-enable -s`;
each case prints its MB/s (1 MB = 10^6 bytes of input) and stores it in `extra_info`, with
the MB per CPU-second of the process (all threads), which a busy shared machine disturbs less.
Peak memory on a 1 GB input is measured by `measure_data_prep_memory.py` beside this file.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tools.data_prep import PrepConfig, prepare

sys.path.insert(0, str(Path(__file__).parent))
from data_prep_corpus import write_corpus  # noqa: E402

GPT2 = Path(__file__).parents[1] / "data" / "gpt2_tokenizer"
CORPUS_BYTES = 6_000_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_corpus(path, CORPUS_BYTES)
    return path


CASES = {"byte": (None, False), "byte+shuffle": (None, True), "gpt2": (str(GPT2), False)}


@pytest.mark.parametrize("case", CASES)
def test_bench_data_prep(benchmark, corpus, tmp_path, case):
    tokenizer, shuffle = CASES[case]
    config = PrepConfig(input=corpus, output=tmp_path / "out", max_seq_length=512, tokenizer=tokenizer,
                        packing="greedy::truncate_right", shuffle=shuffle, dev_ratio=0.05, overwrite=True)
    cpu_seconds: list[float] = []

    def timed() -> dict:
        started = time.process_time()
        result = prepare(config)
        cpu_seconds.append(time.process_time() - started)
        return result

    metadata = benchmark.pedantic(timed, rounds=3, iterations=1, warmup_rounds=0)
    stats = metadata["rduflow"]["stats"]
    assert metadata["number_of_training_files"] == 32 and metadata["number_of_dev_files"] == 1
    assert stats["sequences"] > 0 and stats["malformed_lines"] == 0
    if benchmark.stats is not None:
        size = corpus.stat().st_size / 1e6
        rate, cpu_rate = size / benchmark.stats.stats.mean, size * len(cpu_seconds) / sum(cpu_seconds)
        benchmark.extra_info.update({"MB/s": round(rate, 2), "MB/cpu-s": round(cpu_rate, 2)})
        print(f"\ndata-prep {case}: {rate:.2f} MB/s wall, {cpu_rate:.2f} MB per CPU-second (all threads)")
