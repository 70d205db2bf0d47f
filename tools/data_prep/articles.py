"""Lines to tokens, by SambaNova generative_data_prep's rules.

Per prompt/completion pair of a jsonl line:

* A pair with an empty completion is skipped (kept with ``keep_prompt_only``).
* Space separator (on unless disabled, and off under a chat template): the prompt
  loses its trailing spaces and a non-empty completion gets exactly one leading space.
* A non-empty prompt gets ``prompt_prefix`` before it and ``prompt_postfix`` after it,
  and with ``apply_chat_template`` becomes the template of one user message with the
  generation prompt.
* Each text is encoded as the tokenizer's ``encode`` does, special tokens included;
  an EOS that closes the prompt is removed, as are a BOS that opens the completion of
  a pair with a prompt and an EOS that closes the completion. The pair is then its
  prompt ids (type 0), its completion ids (type 1) and one EOS (type 1), if it has any
  token.
* Type 3 (separator) marks the last token of the line; with the
  ``prompt_completion_pair`` attention boundary, the last token of every pair too.
* The packing unit is the line, or each pair with the ``prompt_completion_pair``
  packing boundary (then only a line's last pair, if kept, ends with type 3).

A `.txt` line is one completion without prompt, space separator or prefix; its last
token is type 3. With categories, every token carries its pair's category id (-1 when
the pair has none).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.chat_template import ChatTemplate
from runtime.hdf5_data import COMPLETION, PROMPT, SEPARATOR
from runtime.tokenizer import Tokenizer
from tools.data_prep.reading import Malformed, Pair

NO_CATEGORY = -1


@dataclass(frozen=True)
class Tokens:
    """A batch's token fields (ids, types[, categories]) and the length of each packing unit."""

    fields: np.ndarray
    unit_lens: np.ndarray


@dataclass
class ArticleTokenizer:
    """Tokenizes batches of parsed lines (see the module docstring)."""

    tokenizer: Tokenizer
    space_separator: bool = True
    keep_prompt_only: bool = False
    pair_packing: bool = False
    pair_attention: bool = False
    prompt_prefix: str = ""
    prompt_postfix: str = ""
    category_ids: dict[str, int] | None = None
    chat_template: ChatTemplate | None = None

    @property
    def num_fields(self) -> int:
        return 2 if self.category_ids is None else 3

    def category_id(self, pair: Pair) -> int:
        """The pair's category id; Malformed for a name not in the categories file."""
        if self.category_ids is None or pair.category is None:
            return NO_CATEGORY
        if pair.category not in self.category_ids:
            raise Malformed(f"category {pair.category!r} is not in --categories-path")
        return self.category_ids[pair.category]

    def __call__(self, lines: Sequence[list[Pair]]) -> Tokens:
        prompts: list[str] = []
        completions: list[str] = []
        has_prompt: list[bool] = []
        categories: list[int] = []
        line_of_pair: list[int] = []
        last_of_line: list[bool] = []
        for index, pairs in enumerate(lines):
            for k, pair in enumerate(pairs):
                if not pair.completion and not self.keep_prompt_only:
                    continue
                prompt, completion = self._texts(pair)
                prompts.append(prompt)
                completions.append(completion)
                has_prompt.append(pair.prompt is not None and bool(prompt))
                categories.append(self.category_id(pair))
                line_of_pair.append(index)
                last_of_line.append(k == len(pairs) - 1)
        return self._assemble(prompts, completions, np.array(has_prompt, bool), categories,
                              np.array(line_of_pair, np.int64), np.array(last_of_line, bool), len(lines))

    def _texts(self, pair: Pair) -> tuple[str, str]:
        prompt, completion = pair.prompt or "", pair.completion
        if pair.prompt is None:
            return "", completion
        if self.space_separator and self.chat_template is None:
            prompt = prompt.rstrip(" ")
            if completion:
                completion = " " + completion.lstrip(" ")
        if prompt:
            prompt = self.prompt_prefix + prompt + self.prompt_postfix
            if self.chat_template is not None:
                prompt = self.chat_template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return prompt, completion

    def _encode(self, texts: list[str], special: bool) -> tuple[np.ndarray, np.ndarray]:
        """Ids and per-text lengths; an empty text has no ids."""
        lens = np.zeros(len(texts), np.int64)
        present = [i for i, t in enumerate(texts) if t]
        ids, lens[present] = self.tokenizer.encode_flat([texts[i] for i in present], special)
        return ids, lens

    def _assemble(self, prompts: list[str], completions: list[str], has_prompt: np.ndarray,
                  categories: list[int], line_of_pair: np.ndarray, last_of_line: np.ndarray,
                  num_lines: int) -> Tokens:
        tok = self.tokenizer
        p_ids, p_lens = _strip(*self._encode(prompts, self.chat_template is None), None, None, tok.eos_id)
        c_ids, c_lens = _strip(*self._encode(completions, True), tok.bos_id, has_prompt, tok.eos_id)
        has_eos = (p_lens + c_lens > 0).astype(np.int64)
        seg_lens = np.stack([p_lens, c_lens, has_eos], axis=1)
        seg_starts = (np.cumsum(seg_lens.ravel()) - seg_lens.ravel()).reshape(-1, 3)
        total = int(seg_lens.sum())
        fields = np.empty((self.num_fields, total), np.int32)
        ids, types = fields[0], fields[1]
        for part, lens, column in ((p_ids, p_lens, 0), (c_ids, c_lens, 1)):
            where = np.repeat(seg_starts[:, column] - (np.cumsum(lens) - lens), lens) + np.arange(len(part))
            ids[where] = part
        eos_at = seg_starts[has_eos > 0, 2]
        ids[eos_at] = tok.eos_id
        types[:] = np.repeat(np.tile(np.array([PROMPT, COMPLETION, COMPLETION], np.int32), len(p_lens)),
                             seg_lens.ravel())
        if self.num_fields == 3:
            fields[2] = np.repeat(np.array(categories, np.int32), seg_lens.sum(axis=1))
        pair_lens = seg_lens.sum(axis=1)
        pair_ends = seg_starts[:, 0] + pair_lens - 1
        types[self._separators(pair_lens, pair_ends, line_of_pair, last_of_line, num_lines)] = SEPARATOR
        if self.pair_packing:
            unit_lens = pair_lens
        else:
            unit_lens = np.bincount(line_of_pair, weights=pair_lens, minlength=num_lines).astype(np.int64)
        return Tokens(fields, unit_lens)

    def _separators(self, pair_lens: np.ndarray, pair_ends: np.ndarray, line_of_pair: np.ndarray,
                    last_of_line: np.ndarray, num_lines: int) -> np.ndarray:
        """Positions of the type-3 tokens."""
        has_tokens = pair_lens > 0
        if self.pair_attention:
            return pair_ends[has_tokens]
        if self.pair_packing:
            return pair_ends[has_tokens & last_of_line]
        last_pair = np.full(num_lines, -1, np.int64)
        kept = np.flatnonzero(has_tokens)
        last_pair[line_of_pair[kept]] = kept
        return pair_ends[last_pair[last_pair >= 0]]


def _strip(ids: np.ndarray, lens: np.ndarray, first_id: int | None, strip_first: np.ndarray | None,
           last_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Drop each text's first id if it is `first_id` (where `strip_first`), then its last if `last_id`."""
    ends = np.cumsum(lens)
    starts = ends - lens
    keep = np.ones(len(ids), bool)
    lens = lens.copy()
    if first_id is not None:
        hit = strip_first & (lens > 0)
        hit[hit] = ids[starts[hit]] == first_id
        keep[starts[hit]] = False
        lens -= hit
    if last_id is not None:
        hit = lens > 0
        hit[hit] = ids[ends[hit] - 1] == last_id
        keep[ends[hit] - 1] = False
        lens -= hit
    return (ids if keep.all() else ids[keep]), lens
