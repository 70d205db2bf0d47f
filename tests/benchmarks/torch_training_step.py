"""The GPT-2 training step of `test_bench_train.py` in PyTorch (eager, or `torch.compile`d), run as
its own process by the interpreter that has torch (PyTorch is never a test dependency):

    /work/venv-ref/bin/python tests/benchmarks/torch_training_step.py --vocab 50257 --seq 128 --threads 2

Prints one JSON line: the seconds of each timed step and the last loss. With `--serve`, prints
`{"ready": true}` after the warm-up step instead, then runs one timed step for each `step` line on
its standard input, answering each with a JSON line of its seconds and loss, until the input ends
(`test_bench_train.py` takes turns with it a step at a time); a `products P` line (P a JSON list
of products, each [batch, m, n, k, A transposed, B transposed, B batched, count]) is answered
with the seconds of those products alone through `torch.matmul`. Exits 4 without torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

NO_TORCH = 4
#: timed calls of each product (their median counts)
PRODUCT_CALLS = 5


def batch(vocab: int, batch_size: int, seq: int, padding: int = 0) -> dict[str, np.ndarray]:
    """Token ids and types (a prompt, then the completion the loss counts, then `padding` tokens it
    does not), the same for both sides."""
    rng = np.random.default_rng(0)
    types = np.zeros((batch_size, seq), np.int32)
    types[:, seq // 4:seq - padding] = 1
    return {"input_ids": rng.integers(0, vocab, (batch_size, seq), dtype=np.int32), "token_type_ids": types}


def products_seconds(products: list[list]) -> float:
    """Seconds of `products` alone, each a `torch.matmul` of operands laid out as described: the
    median of `PRODUCT_CALLS` calls after a warm-up one, times its count."""
    import torch
    total = 0.0
    for batch_size, m, n, k, a_transposed, b_transposed, b_batched, count in products:
        a = torch.randn(batch_size, k, m).transpose(1, 2) if a_transposed else torch.randn(batch_size, m, k)
        bs = batch_size if b_batched else 1
        b = torch.randn(bs, n, k).transpose(1, 2) if b_transposed else torch.randn(bs, k, n)
        a = a[0] if batch_size == 1 else a
        b = b if b_batched and batch_size > 1 else b[0]  # a shared 2-D B: torch folds the batch into rows
        times = []
        for _ in range(1 + PRODUCT_CALLS):
            start = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - start)
        total += float(np.median(times[1:])) * count
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    for name, default in (("--vocab", 128), ("--seq", 64), ("--batch", 4), ("--threads", 1), ("--rounds", 3),
                          ("--layers", 12), ("--embd", 768), ("--heads", 12), ("--padding", 0)):
        parser.add_argument(name, type=int, default=default)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--serve", action="store_true", help="time one step per 'step' line of standard input")
    args = parser.parse_args()
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"no torch: {e}", file=sys.stderr)
        return NO_TORCH
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers, n_embd=args.embd, n_head=args.heads, vocab_size=args.vocab,
                                     n_positions=args.seq, activation_function="gelu_new", resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).train()
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    data = batch(args.vocab, args.batch, args.seq, args.padding)
    ids = torch.from_numpy(data["input_ids"]).long()
    mask = torch.from_numpy(data["token_type_ids"][:, 1:] == 1)

    def step() -> float:
        logits = forward(ids, use_cache=False).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                               reduction="none")
        loss = ce[mask.reshape(-1)].mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        return float(loss.detach())

    def timed() -> tuple[float, float]:
        start = time.perf_counter()
        loss = step()
        return time.perf_counter() - start, loss

    step()  # warm up (and compile)
    if args.serve:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            request, _, products = line.strip().partition(" ")
            if request == "step":
                seconds, loss = timed()
                print(json.dumps({"seconds": seconds, "loss": loss}), flush=True)
            elif request == "products":
                print(json.dumps({"seconds": products_seconds(json.loads(products))}), flush=True)
            else:
                break
        return 0
    runs = [timed() for _ in range(args.rounds)]
    print(json.dumps({"seconds": [seconds for seconds, _ in runs], "loss": runs[-1][1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
