"""A deterministic synthetic corpus for data-prep benchmarks: English-like jsonl."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SYLLABLES = ["ka", "to", "ri", "an", "el", "mo", "su", "in", "de", "ra", "ti", "on", "er", "la",
             "pe", "no", "ve", "is", "co", "ma", "th", "st", "ing", "ed", "re", "al"]


def vocabulary(rng: np.random.Generator, size: int = 4000) -> list[str]:
    """Pseudo-words of 1-4 syllables, with the most common English words first."""
    common = "the of and to a in is it that for on was with as be at by this from or".split()
    words = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 5))) for _ in range(size)]
    return common + words


def lines(seed: int = 0) -> Iterator[str]:
    """Endless jsonl lines: a short prompt and a longer completion, Zipf-distributed words."""
    rng = np.random.default_rng(seed)
    vocab = np.array(vocabulary(rng))
    while True:
        picks = np.minimum(rng.zipf(1.3, size=400), len(vocab)) - 1
        words = vocab[picks].tolist()
        n_prompt, n_completion = int(rng.integers(5, 30)), int(rng.integers(20, 200))
        prompt = " ".join(words[:n_prompt]).capitalize() + "?"
        completion = " " + " ".join(words[n_prompt:n_prompt + n_completion]).capitalize() + "."
        yield json.dumps({"prompt": prompt, "completion": completion}) + "\n"


def write_corpus(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write about `size_bytes` of jsonl to `path`, streaming; return the bytes written."""
    written = 0
    with path.open("w", encoding="utf-8") as f:
        for line in lines(seed):
            f.write(line)
            written += len(line)
            if written >= size_bytes:
                return written
    return written
