"""Peak memory (RSS) and throughput of `rduflow data-prep` on a large generated input.

    python tests/benchmarks/measure_data_prep_memory.py [--size-mb 1024] [--tokenizer PATH]
        [--shuffle] [--workdir DIR] [-- extra data-prep flags]

Writes a synthetic jsonl corpus of the requested size into the work folder (kept for
later runs), runs the command in a child process and reports its wall time, MB/s
(10^6 bytes of input per second) and peak resident set size (from wait4's rusage).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from data_prep_corpus import write_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="input size in MiB (default 1024)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path (default: byte-level)")
    parser.add_argument("--shuffle", action="store_true", help="also shuffle (two passes through buckets)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rduflow-data-prep-bench")
    parser.add_argument("extra", nargs="*", help="more data-prep flags, after --")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / f"corpus_{args.size_mb}MiB.jsonl"
    if not corpus.exists():
        started = time.perf_counter()
        write_corpus(corpus.with_suffix(".partial"), args.size_mb << 20)
        corpus.with_suffix(".partial").rename(corpus)
        print(f"generated {corpus} in {time.perf_counter() - started:.1f} s")
    command = [sys.executable, "-m", "tools.cli", "data-prep", "--input", str(corpus),
               "--output", str(args.workdir / "out"), "--max-seq-length", "2048", "--overwrite",
               "--packing", "greedy::truncate_right", "--dev-ratio", "0.05",
               *(["--tokenizer", args.tokenizer] if args.tokenizer else []),
               *(["--shuffle"] if args.shuffle else []), *args.extra]
    print(" ".join(command))
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    size_mb = corpus.stat().st_size / 1e6
    print(f"exit status {os.waitstatus_to_exitcode(status)}; input {size_mb:.0f} MB in {elapsed:.1f} s "
          f"= {size_mb / elapsed:.2f} MB/s; peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
