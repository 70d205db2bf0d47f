"""`rduflow data-prep`: text or jsonl into packed HDF5 sequences for training."""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tools import cli
from tools.data_prep import PACKINGS, PrepConfig, prepare


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data-prep",
        description="Tokenize a .txt (a line is a completion) or .jsonl (prompt/completion objects, "
                    "or a list of them per line) file, pack the tokens into sequences and write "
                    "train/dev HDF5 files, a test jsonl, metadata.yaml and the tokenizer.")
    parser.add_argument("--input", required=True, type=Path, metavar="PATH", help="input .txt or .jsonl file")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR",
                        help="output folder (must not exist, see --overwrite)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="a tokenizer.json, a folder with one, or a folder with vocab.json + merges.txt "
                             "(default: the built-in byte-level tokenizer)")
    parser.add_argument("--max-seq-length", required=True, type=int, metavar="N", help="tokens per sequence")
    parser.add_argument("--packing", default="full", choices=PACKINGS, metavar="STYLE",
                        help=f"how articles fill sequences: {', '.join(PACKINGS)} (default: full)")
    parser.add_argument("--dev-ratio", type=float, default=0.0, metavar="X",
                        help="fraction of articles for dev_1_of_1.hdf5")
    parser.add_argument("--test-ratio", type=float, default=0.0, metavar="X",
                        help="fraction of articles kept as test/test.jsonl")
    parser.add_argument("--num-training-splits", type=int, default=1, metavar="N",
                        help="number of train_{i}_of_{N}.hdf5 files, balanced within one sequence")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the articles (memory stays bounded)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of --shuffle (default: 0)")
    parser.add_argument("--prompt-keyword", default="prompt", metavar="KEY",
                        help="jsonl key of the prompt text")
    parser.add_argument("--completion-keyword", default="completion", metavar="KEY",
                        help="jsonl key of the completion text")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first malformed line instead of skipping it")
    cli.add_debug_flag(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    config = PrepConfig(
        input=args.input, output=args.output, max_seq_length=args.max_seq_length,
        tokenizer=args.tokenizer, packing=args.packing, dev_ratio=args.dev_ratio,
        test_ratio=args.test_ratio, num_training_splits=args.num_training_splits,
        shuffle=args.shuffle, seed=args.seed, prompt_keyword=args.prompt_keyword,
        completion_keyword=args.completion_keyword, overwrite=args.overwrite, strict=args.strict)
    metadata = prepare(config, Console(stderr=True))
    print(_summary(metadata, args.output))
    return 0


def _summary(metadata: dict, output: Path) -> str:
    splits = metadata["splits"]
    files = metadata["file_counts"]["train"]
    parts = [f"{splits['train']['sequences']} training sequences in {files} file(s)"]
    if "dev" in splits:
        parts.append(f"{splits['dev']['sequences']} dev sequences")
    if "test" in splits:
        parts.append(f"{splits['test']['articles']} test articles")
    dropped = f", {metadata['tokens_dropped']} tokens dropped" if metadata["tokens_dropped"] else ""
    return f"Data prepared in {output}: {', '.join(parts)}{dropped}"
