"""Chat templates: a checkpoint's conversation format, rendered as Hugging Face does.

A checkpoint declares its template as ``chat_template`` in ``tokenizer_config.json`` (a
string, or a list of ``{"name", "template"}`` of which "default" is used) or in a
``chat_template.jinja`` file beside it. It is rendered with jinja2 in a sandbox with the
same settings, globals and filters as ``transformers``' ``apply_chat_template``
(``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``raise_exception``,
``strftime_now``, a non-ASCII-preserving ``tojson``), given ``messages``,
``add_generation_prompt`` and the tokenizer's special tokens (``bos_token``,
``eos_token``, ...), so a prompt's text is the one the model was tuned on.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ir.errors import DataError, first_line
from runtime.gguf_model import is_gguf
from runtime.gguf_tokenizer import tokenizer_config
from runtime.tokenizer import CONFIG_FILE, read_tokenizer_config, token_name

TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                      "cls_token", "mask_token")


class ChatTemplate:
    """A jinja chat template and the special tokens it may refer to."""

    def __init__(self, template: str, special_tokens: dict[str, str]):
        """DataError naming the line if `template` is not valid jinja."""
        self.template = template
        self.special_tokens = dict(special_tokens)
        try:
            self._compiled = _ENVIRONMENT.from_string(template)
        except jinja2.TemplateSyntaxError as err:
            raise DataError(f"chat template line {err.lineno}: {err.message}") from err

    @classmethod
    def from_folder(cls, path: str | Path) -> ChatTemplate | None:
        """The template of a checkpoint or tokenizer folder (or a GGUF file's `tokenizer.chat_template`),
        or None if it declares none."""
        folder = Path(path)
        config = tokenizer_config(folder) if is_gguf(folder) and folder.is_file() else read_tokenizer_config(folder)
        template = _config_template(config, folder / CONFIG_FILE)
        if template is None and (folder / TEMPLATE_FILE).is_file():
            template = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
        if template is None:
            return None
        specials = {key: name for key in SPECIAL_TOKEN_KEYS if (name := token_name(config.get(key)))}
        return cls(template, specials)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **variables: Any) -> str:
        """The prompt text of `messages` (each a dict with "role" and "content").

        `add_generation_prompt` appends the header that opens the assistant's turn;
        `variables` are passed to the template as well (e.g. ``date_string``).
        """
        context = {**self.special_tokens, **variables}
        try:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **context)
        except (jinja2.TemplateError, TypeError, ValueError) as err:  # e.g. a message without "content"
            raise DataError(f"chat template: {first_line(err)}") from err


def _config_template(config: dict[str, Any], source: Path) -> str | None:
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise DataError(f"{source}: chat_template lists no template named 'default' "
                        f"(has: {', '.join(map(str, named)) or 'none'})")
    raise DataError(f"{source}: chat_template must be a string or a list of named templates")


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks):
    rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENVIRONMENT = _environment()
