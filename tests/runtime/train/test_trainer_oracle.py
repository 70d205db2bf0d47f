"""The training loop driven by the native runtime against the same loop on the reference interpreter."""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.program import load
from runtime.train import TrainConfig, Trainer
from train_helpers import FIXTURES, InterpretedProgram, compile_training, random_tokens


class Quiet:
    def line(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        raise AssertionError(text)

    def progress(self, done: int, total: int, loss: float) -> None:
        pass


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    random_tokens(data / "train_1_of_1.hdf5", 12, seed=5)
    random_tokens(data / "dev_1_of_1.hdf5", 7, seed=6)  # 3 full batches of 2, one row left out
    pef, graph = compile_training(str(FIXTURES / "hf" / "llama-tiny"))
    return data, pef, graph


def train(program, data, **options):
    config = TrainConfig(data=data, checkpoint=FIXTURES / "hf" / "llama-tiny", num_steps=4, eval_every=2, seed=9,
                         lr=1e-2, lr_schedule="cosine", warmup_steps=1, **options)
    with Trainer(program, config, Quiet()) as trainer:
        return trainer.run()


def test_native_training_and_evaluation_follow_the_interpreter(llama):
    data, pef, graph = llama
    native = train(load(pef), data)
    oracle = train(InterpretedProgram(pef, graph), data)
    assert [r.step for r in native.history] == [1, 2, 3, 4]
    np.testing.assert_allclose([r.loss for r in native.history], [r.loss for r in oracle.history], rtol=1e-5)
    np.testing.assert_allclose([r.grad_norm for r in native.history], [r.grad_norm for r in oracle.history],
                               rtol=1e-4)
    assert [s for s, _ in native.evaluations] == [2, 4]
    for (_, got), (_, want) in zip(native.evaluations, oracle.evaluations):
        assert (got.batches, got.rows) == (3, 6)
        assert got.loss == pytest.approx(want.loss, rel=1e-5) and got.accuracy == pytest.approx(want.accuracy, abs=1e-6)
        assert got.perplexity == pytest.approx(math.exp(got.loss))


def test_evaluation_weighs_each_batch_by_its_counted_positions(llama):
    data, pef, graph = llama
    program = InterpretedProgram(pef, graph)
    config = TrainConfig(data=data, checkpoint=FIXTURES / "hf" / "llama-tiny", seed=9)
    with Trainer(program, config, Quiet()) as trainer:
        trainer.start()
        metrics = trainer.evaluate()
        losses, counts = [], []
        for first in (0, 2, 4):
            batch = trainer.dev.rows(np.arange(first, first + 2))
            losses.append(float(program.evaluate({**batch, "lr": np.float32(0)})["loss"]))
            counts.append(np.count_nonzero(batch["token_type_ids"][:, 1:] == 1))
    assert len(set(counts)) > 1  # the weighting matters
    assert metrics.loss == pytest.approx(np.dot(losses, counts) / sum(counts), rel=1e-12)


class Asked(InterpretedProgram):
    """The oracle program, recording the outputs each call names."""

    def __init__(self, pef, graph):
        super().__init__(pef, graph)
        self.asked: set[tuple[str, tuple[str, ...]]] = set()

    def step(self, inputs, *, outputs=None):
        self.asked.add(("step", tuple(outputs)))
        return super().step(inputs, outputs=outputs)

    def evaluate(self, inputs, *, outputs=None):
        self.asked.add(("evaluate", tuple(outputs)))
        return super().evaluate(inputs, outputs=outputs)


def test_the_loop_copies_its_metrics_not_the_logits(llama):
    data, pef, graph = llama
    program = Asked(pef, graph)
    train(program, data)
    assert program.asked == {("step", ("loss", "accuracy", "grad_norm")), ("evaluate", ("loss", "accuracy"))}
