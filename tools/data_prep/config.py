"""The options of a data-prep run, with SambaNova generative_data_prep's defaults and rules."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ir.errors import ConfigError

STYLES = ("full", "single", "greedy")
OVERFLOWS = ("truncate_left", "truncate_right", "drop")
PACKINGS = ("full",) + tuple(f"{s}::{o}" for s in STYLES[1:] for o in OVERFLOWS)
BOUNDARIES = ("jsonl", "prompt_completion_pair")
DEFAULT_MAX_SEQ_LENGTH = 2048
#: longest sequence accepted: a row of this many int32 tokens is 4 MiB per dataset
MAX_SEQ_LENGTH = 1 << 20
BUCKET_BYTES = 32 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class SplitCounts:
    """How many files each split gets; line k goes to split file k mod `total`."""

    train: int
    dev: int
    test: int

    @property
    def total(self) -> int:
        return self.train + self.dev + self.test

    def name(self, index: int) -> tuple[str, int, int]:
        """(split, 1-based number, files in that split) of split file `index` (train, test, then dev)."""
        if index < self.train:
            return "train", index + 1, self.train
        if index < self.train + self.test:
            return "test", index - self.train + 1, self.test
        return "dev", index - self.train - self.test + 1, self.dev


@dataclass(frozen=True)
class PrepConfig:
    """Everything `prepare` needs; the CLI flags map one to one.

    `output` ending in ``.hdf5`` selects the reference's ``data_prep`` mode: one HDF5
    file, no splits. Otherwise it is the ``pipeline`` mode: a folder of split files.
    """

    input: Path
    output: Path
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    tokenizer: str | None = None
    packing: str = "full"
    packing_boundary: str = "jsonl"
    attention_boundary: str = "jsonl"
    dev_ratio: float | None = None
    test_ratio: float | None = None
    num_training_splits: int | None = None
    num_dev_splits: int | None = None
    num_test_splits: int | None = None
    shuffle: bool = False
    seed: int = 0
    prompt_keyword: str = "prompt"
    completion_keyword: str = "completion"
    prompt_prefix: str | None = None
    prompt_postfix: str | None = None
    disable_space_separator: bool = False
    keep_prompt_only_sequences: bool = False
    categories_path: Path | None = None
    apply_chat_template: bool = False
    special_tokens_dict: str | None = None
    do_not_balance_hdf5: bool = False
    keep_split_jsonls: bool = False
    overwrite: bool = False
    strict: bool = False
    bucket_bytes: int = BUCKET_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.max_seq_length <= MAX_SEQ_LENGTH:
            raise ConfigError(f"--max-seq-length must be in [1, {MAX_SEQ_LENGTH}], got {self.max_seq_length}")
        if self.packing not in PACKINGS:
            raise ConfigError(f"unknown --packing {self.packing!r}; choose one of {', '.join(PACKINGS)}")
        for flag, value in (("--packing-boundary", self.packing_boundary),
                            ("--attention-boundary", self.attention_boundary)):
            if value not in BOUNDARIES:
                raise ConfigError(f"unknown {flag} {value!r}; choose one of {', '.join(BOUNDARIES)}")
        for flag, ratio in (("--dev-ratio", self.dev_ratio), ("--test-ratio", self.test_ratio)):
            if ratio is not None and not 0.0 <= ratio < 1.0:
                raise ConfigError(f"{flag} must be in [0, 1), got {ratio}")
        if (self.dev_ratio or 0.0) + (self.test_ratio or 0.0) >= 1.0:
            raise ConfigError("--dev-ratio plus --test-ratio must be below 1: no data would be left to train on")
        for flag, count, least in (("--num-training-splits", self.num_training_splits, 1),
                                   ("--num-dev-splits", self.num_dev_splits, 0),
                                   ("--num-test-splits", self.num_test_splits, 0)):
            if count is not None and count < least:
                raise ConfigError(f"{flag} must be at least {least}, got {count}")
        if self.prompt_keyword == self.completion_keyword:
            raise ConfigError("--prompt-keyword and --completion-keyword must differ")
        if self.single_file and self._split_flags():
            raise ConfigError(f"--output {self.output} is one .hdf5 file (no splits); "
                              f"{self._split_flags()[0]} needs an output folder")

    @property
    def single_file(self) -> bool:
        """The reference's `data_prep` mode: `output` is one HDF5 file."""
        return self.output.suffix.lower() == ".hdf5"

    @property
    def style(self) -> str:
        return self.packing.split("::")[0]

    @property
    def overflow(self) -> str | None:
        return self.packing.split("::")[1] if "::" in self.packing else None

    def _split_flags(self) -> list[str]:
        given = {"--dev-ratio": self.dev_ratio, "--test-ratio": self.test_ratio,
                 "--num-training-splits": self.num_training_splits, "--num-dev-splits": self.num_dev_splits,
                 "--num-test-splits": self.num_test_splits,
                 "--keep-split-jsonls": self.keep_split_jsonls or None,
                 "--shuffle": self.shuffle or None}
        return [flag for flag, value in given.items() if value is not None]

    def split_counts(self, input_bytes: int) -> SplitCounts:
        """The reference's rule: either all three split counts, or training splits and ratios.

        Training splits default to 32 below 10 GiB of input, 128 below 100 GiB, else 256.
        With ratios, the total is ``int(train / (1 - dev - test))``, test gets
        ``int(total * test_ratio)`` and dev the rest.
        """
        if self.single_file:
            return SplitCounts(1, 0, 0)
        counts = (self.num_training_splits, self.num_dev_splits, self.num_test_splits)
        if None not in counts:
            for flag, ratio in (("--dev-ratio", self.dev_ratio), ("--test-ratio", self.test_ratio)):
                if ratio is not None:
                    raise ConfigError(f"{flag} cannot be combined with --num-dev-splits and --num-test-splits")
            return SplitCounts(*counts)
        if self.num_dev_splits is not None or self.num_test_splits is not None:
            raise ConfigError("--num-dev-splits and --num-test-splits need each other and --num-training-splits")
        train = self.num_training_splits or (32 if input_bytes < 10 * GIB else 128 if input_bytes < 100 * GIB
                                             else 256)
        dev_ratio, test_ratio = self.dev_ratio or 0.0, self.test_ratio or 0.0
        total = int(train / (1 - dev_ratio - test_ratio))
        test = int(total * test_ratio)
        return SplitCounts(train, total - test - train, test)
