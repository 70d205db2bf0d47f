"""The 8x8 digits of scikit-learn as HDF5 training data for the tutorial models (`mlp`, `lenet`).

    python -m tools.digits --output digits/ [--test-ratio 0.2] [--seed 0]

Writes `train_1_of_1.hdf5` and `dev_1_of_1.hdf5` (the held-out test images, which
`rduflow run` evaluates) with datasets named after the models' inputs: `x`, float32
images `(n, 8, 8)` scaled to [0, 1], and `labels`, int32 digits 0-9; plus a
`metadata.yaml` with the counts. The split is seeded (not stratified): a
permutation drawn from `seed` puts the last `test_ratio` of the images in dev.
Needs scikit-learn (`pip install rduflow[digits]`).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

from ir.errors import ConfigError, DataError, RduflowError

FORMAT = "rduflow-tensors"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (n, 8, 8) in [0, 1], labels int32 (n,))."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ConfigError("the digits dataset needs scikit-learn: pip install 'rduflow[digits]'") from None
    bunch = sklearn_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int32)


def write_digits(output: str | Path, test_ratio: float = 0.2, seed: int = 0, overwrite: bool = False) -> dict:
    """Write the train and dev (test) files into `output`; return the metadata."""
    if not 0.0 < test_ratio < 1.0:
        raise ConfigError(f"--test-ratio must be between 0 and 1, got {test_ratio}")
    output = Path(output)
    if output.exists() and not overwrite:
        raise DataError(f"{output} exists (use --overwrite to replace it)")
    images, labels = load_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = round(len(labels) * test_ratio)
    splits = {"train": order[:-n_test], "dev": order[-n_test:]}
    stage = output.parent / f".{output.name}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    files = {}
    for split, rows in splits.items():
        name = f"{split}_1_of_1.hdf5"
        with h5py.File(stage / name, "w") as f:
            f.create_dataset("x", data=images[rows])
            f.create_dataset("labels", data=labels[rows])
        files[split] = {name: len(rows)}
    metadata = {"format": FORMAT, "dataset": "sklearn digits (8x8)", "seed": seed, "test_ratio": test_ratio,
                "datasets": {"x": "float32 (n, 8, 8), pixel / 16", "labels": "int32 (n,), 0-9"}, "files": files}
    (stage / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False), encoding="utf-8")
    if output.exists():
        shutil.rmtree(output)
    stage.rename(output)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--test-ratio", type=float, default=0.2, metavar="X",
                        help="fraction of the images held out as dev/test (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        metadata = write_digits(args.output, args.test_ratio, args.seed, args.overwrite)
    except RduflowError as err:
        print(err.render(), file=sys.stderr)
        return 1
    counts = {split: sum(f.values()) for split, f in metadata["files"].items()}
    print(f"Digits written to {args.output}: {counts['train']} training and {counts['dev']} test (dev) images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
