"""`rduflow data-prep`: text or jsonl into packed HDF5 sequences for training; `data-prep decode FILE`."""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tools import arguments
from tools.data_prep import BOUNDARIES, PACKINGS, PrepConfig, decode_file, prepare
from tools.data_prep.config import DEFAULT_MAX_SEQ_LENGTH


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data-prep",
        description="Tokenize .txt (a line is a completion) or .jsonl (prompt/completion objects, or a list of "
                    "them per line) input, a file or a folder of them, pack the tokens into sequences and "
                    "write train/dev HDF5 files, test jsonl, metadata.yaml and tokenizer/, as SambaNova's "
                    "generative_data_prep pipeline does (--output FILE.hdf5: one file, as its data_prep "
                    "does). `rduflow data-prep decode FILE.hdf5` prints a prepared file's rows as text.")
    parser.add_argument("decode", nargs="*", metavar="decode FILE.hdf5", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, metavar="PATH", help="input .txt or .jsonl file, or a folder of them")
    parser.add_argument("--output", type=Path, metavar="DIR|FILE.hdf5",
                        help="output folder, or one .hdf5 file (must not exist, see --overwrite)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="a tokenizer.json, a folder with one, or a folder with vocab.json + merges.txt "
                             "(default: the built-in byte-level tokenizer)")
    parser.add_argument("--max-seq-length", type=int, default=DEFAULT_MAX_SEQ_LENGTH, metavar="N",
                        help=f"tokens per sequence (default: {DEFAULT_MAX_SEQ_LENGTH})")
    parser.add_argument("--packing", "--input-packing-config", default="full", choices=PACKINGS, metavar="STYLE",
                        help=f"how articles fill sequences: {', '.join(PACKINGS)} (default: full)")
    for flag, text in (("--packing-boundary", "the unit kept whole when packing"),
                       ("--attention-boundary", "the unit whose last token is the separator (type 3)")):
        parser.add_argument(flag, default="jsonl", choices=BOUNDARIES, help=f"{text} (default: jsonl)")
    parser.add_argument("--dev-ratio", type=float, default=None, metavar="X", help="fraction of lines for dev files")
    parser.add_argument("--test-ratio", type=float, default=None, metavar="X",
                        help="fraction of lines kept as text in test/")
    parser.add_argument("--num-training-splits", type=int, default=None, metavar="N",
                        help="train_{i}_of_{N}.hdf5 files (default: 32; 128 from 10 GiB of input, 256 from 100)")
    parser.add_argument("--num-dev-splits", type=int, default=None, metavar="N",
                        help="dev files (with --num-training-splits and --num-test-splits, instead of ratios)")
    parser.add_argument("--num-test-splits", type=int, default=None, metavar="N", help="test files (see above)")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the lines (memory stays bounded)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of --shuffle (default: 0)")
    parser.add_argument("--prompt-keyword", default="prompt", metavar="KEY", help="jsonl key of the prompt text")
    parser.add_argument("--completion-keyword", default="completion", metavar="KEY",
                        help="jsonl key of the completion text")
    parser.add_argument("--prompt-prefix", default=None, metavar="TEXT", help="text put before every prompt")
    parser.add_argument("--prompt-postfix", default=None, metavar="TEXT", help="text put after every prompt")
    parser.add_argument("--disable-space-separator", action="store_true",
                        help="do not start every completion with one space")
    parser.add_argument("--keep-prompt-only-sequences", action="store_true",
                        help="keep pairs with an empty completion and sequences without completion tokens")
    parser.add_argument("--categories-path", type=Path, default=None, metavar="FILE.json",
                        help="a JSON list of the jsonl 'category' values: writes a category_ids dataset")
    parser.add_argument("--apply-chat-template", action="store_true",
                        help="render each prompt with the tokenizer's chat template (a user message)")
    parser.add_argument("--special-tokens-dict", default=None, metavar="JSON",
                        help="special tokens to add to the tokenizer, e.g. \"{'sep_token': '[SEP]'}\"")
    parser.add_argument("--do-not-balance-hdf5", action="store_true",
                        help="do not even out the rows of each split's files")
    parser.add_argument("--keep-split-jsonls", action="store_true",
                        help="keep each split file's input lines in splits/")
    parser.add_argument("--overwrite", "--overwrite-output-path", action="store_true",
                        help="replace an existing output")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first malformed line instead of skipping it")
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main, parser=parser)


def main(args: argparse.Namespace) -> int:
    if args.decode:
        return _decode(args)
    if args.input is None or args.output is None:
        args.parser.error("--input and --output are required (or: data-prep decode FILE.hdf5)")
    config = PrepConfig(
        input=args.input, output=args.output, max_seq_length=args.max_seq_length, tokenizer=args.tokenizer,
        packing=args.packing, packing_boundary=args.packing_boundary, attention_boundary=args.attention_boundary,
        dev_ratio=args.dev_ratio, test_ratio=args.test_ratio, num_training_splits=args.num_training_splits,
        num_dev_splits=args.num_dev_splits, num_test_splits=args.num_test_splits, shuffle=args.shuffle,
        seed=args.seed, prompt_keyword=args.prompt_keyword, completion_keyword=args.completion_keyword,
        prompt_prefix=args.prompt_prefix, prompt_postfix=args.prompt_postfix,
        disable_space_separator=args.disable_space_separator,
        keep_prompt_only_sequences=args.keep_prompt_only_sequences, categories_path=args.categories_path,
        apply_chat_template=args.apply_chat_template, special_tokens_dict=args.special_tokens_dict,
        do_not_balance_hdf5=args.do_not_balance_hdf5, keep_split_jsonls=args.keep_split_jsonls,
        overwrite=args.overwrite, strict=args.strict)
    result = prepare(config, Console(stderr=True))
    print(_summary(result, args.output))
    return 0


def _decode(args: argparse.Namespace) -> int:
    if len(args.decode) != 2 or args.decode[0] != "decode":
        args.parser.error(f"unexpected arguments {' '.join(args.decode)!r} (did you mean: data-prep decode FILE.hdf5?)")
    for line in decode_file(Path(args.decode[1]), args.tokenizer):
        print(line)
    return 0


def _summary(result: dict, output: Path) -> str:
    if "rduflow" not in result:
        stats = result
        parts = [f"{stats['sequences']} sequences"]
    else:
        stats = result["rduflow"]["stats"]
        files = result["rduflow"]["files"]
        parts = [f"{sum(files['train'].values())} training sequences in {len(files['train'])} file(s)"]
        if "dev" in files:
            parts.append(f"{sum(files['dev'].values())} dev sequences in {len(files['dev'])} file(s)")
        if result["number_of_test_files"]:
            parts.append(f"{result['number_of_test_files']} test file(s)")
    dropped = f", {stats['tokens_dropped']} tokens dropped" if stats["tokens_dropped"] else ""
    return f"Data prepared in {output}: {', '.join(parts)}{dropped}"
