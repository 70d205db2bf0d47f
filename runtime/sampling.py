"""Choosing the next token from logits, on the host: greedy or sampled.

The steps follow Hugging Face `generate()`: the repetition penalty first (a logit
of a token already in the sequence is divided by the penalty when positive,
multiplied when negative), then temperature, top-k and top-p (nucleus: the
smallest set of most likely tokens whose probability reaches `top_p`), then a
draw from the softmax. Temperature 0 is greedy: the arg max (the first one on
ties) after the penalty. Draws come from one `numpy` generator seeded by `seed`,
so a seed reproduces a sample. These are run-time choices: none of them needs
a recompile.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pydantic

from ir.errors import config_error


class SamplingOptions(pydantic.BaseModel):
    """How to pick each next token; a bad value is a ConfigError naming the option."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    #: 0 is greedy; otherwise logits are divided by it before sampling
    temperature: float = pydantic.Field(1.0, ge=0.0)
    #: keep only the k most likely tokens (0: all)
    top_k: int = pydantic.Field(0, ge=0)
    #: keep the most likely tokens whose probabilities add up to top_p (1: all)
    top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
    #: > 1 discourages tokens already in the sequence (1: off)
    repetition_penalty: float = pydantic.Field(1.0, gt=0.0)
    seed: int = 0

    @classmethod
    def parse(cls, flag=lambda field: field, **values) -> SamplingOptions:
        """The options from `values`; ConfigError naming `flag(field)` of the first bad one."""
        try:
            return cls(**values)
        except pydantic.ValidationError as err:
            raise config_error(err, flag, show_input=True) from None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Picks next tokens with one seeded random generator."""

    def __init__(self, options: SamplingOptions):
        self.options = options
        self.rng = np.random.default_rng(options.seed)

    def next_token(self, logits: np.ndarray, previous: Sequence[int]) -> int:
        """The token following `previous` (prompt and tokens generated so far) given its logits."""
        scores = penalize(np.asarray(logits, np.float64), previous, self.options.repetition_penalty)
        if self.options.greedy:
            return int(np.argmax(scores))
        probs = distribution(scores, self.options)
        draw = self.rng.random()
        return int(min(np.searchsorted(np.cumsum(probs), draw * probs.sum(), side="right"), len(probs) - 1))


def penalize(scores: np.ndarray, previous: Sequence[int], penalty: float) -> np.ndarray:
    """Hugging Face's repetition penalty on the logits of tokens in `previous`."""
    if penalty == 1.0 or not len(previous):
        return scores
    seen = np.unique(np.asarray(previous, np.int64))
    out = scores.copy()
    out[seen] = np.where(out[seen] < 0, out[seen] * penalty, out[seen] / penalty)
    return out


def distribution(scores: np.ndarray, options: SamplingOptions) -> np.ndarray:
    """Probabilities after temperature, top-k and top-p (zero outside the kept tokens)."""
    scaled = scores / options.temperature
    order = np.argsort(-scores, kind="stable")  # by the scores: dividing may round two of them equal
    keep = len(order) if options.top_k == 0 else min(options.top_k, len(order))
    ranked = scaled[order[:keep]]
    probs = np.exp(ranked - ranked.max())
    probs /= probs.sum()
    if options.top_p < 1.0:
        before = np.cumsum(probs) - probs  # mass of the more likely tokens
        probs = np.where(before < options.top_p, probs, 0.0)
        probs /= probs.sum()
    out = np.zeros_like(scores)
    out[order[:keep]] = probs
    return out
