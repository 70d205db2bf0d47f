"""Chat templates render the text transformers' `apply_chat_template` renders."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from ir.errors import DataError
from runtime.chat_template import ChatTemplate

CHAT = Path(__file__).parents[1] / "fixtures" / "chat"
REFERENCES = json.loads((CHAT / "references.json").read_text(encoding="utf-8"))
USER = [{"role": "user", "content": "Hi"}]


def _template(name: str) -> str:
    return (CHAT / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.mark.parametrize("case", REFERENCES["cases"], ids=lambda c: f"{c['template']}-{c['case']}")
def test_renders_as_transformers(case):
    template = ChatTemplate(_template(case["template"]), case["special_tokens"])
    extra = {"tools": case["tools"]} if case["tools"] else {}
    text = template.render(case["messages"], add_generation_prompt=case["add_generation_prompt"],
                           date_string=REFERENCES["date_string"], **extra)
    assert text == case["text"]


def _write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_from_folder_reads_string_template_and_dict_special_tokens(tmp_path):
    folder = _write_config(tmp_path, {"chat_template": _template("llama32"),
                                      "bos_token": {"content": "<|begin_of_text|>", "lstrip": False},
                                      "eos_token": "<|eot_id|>", "pad_token": None})
    template = ChatTemplate.from_folder(folder)
    assert template.special_tokens == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    case = next(c for c in REFERENCES["cases"] if (c["template"], c["case"]) == ("llama32", "user"))
    assert template.render(case["messages"], date_string=REFERENCES["date_string"]) == case["text"]


def test_from_folder_takes_the_default_of_named_templates(tmp_path):
    folder = _write_config(tmp_path, {"chat_template": [
        {"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "{{ bos_token }}DEFAULT"}],
        "bos_token": "<s>"})
    assert ChatTemplate.from_folder(folder).render(USER) == "<s>DEFAULT"


def test_from_folder_reads_chat_template_jinja(tmp_path):
    (tmp_path / "chat_template.jinja").write_text(_template("smollm2"), encoding="utf-8")
    text = ChatTemplate.from_folder(tmp_path).render(USER, add_generation_prompt=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n")


def test_from_folder_without_template_is_none(tmp_path):
    assert ChatTemplate.from_folder(_write_config(tmp_path, {"eos_token": "</s>"})) is None
    assert ChatTemplate.from_folder(tmp_path / "missing") is None


def test_named_templates_without_default_is_an_error(tmp_path):
    folder = _write_config(tmp_path, {"chat_template": [{"name": "tool_use", "template": "x"}]})
    with pytest.raises(DataError, match="no template named 'default' \\(has: tool_use\\)"):
        ChatTemplate.from_folder(folder)


def test_raise_exception_becomes_a_data_error():
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}", {})
    with pytest.raises(DataError, match="chat template: roles must alternate"):
        template.render(USER)


def test_messages_the_template_cannot_join_are_a_data_error():
    with pytest.raises(DataError, match="chat template: can only concatenate str"):
        ChatTemplate(_template("smollm2"), {}).render([{"role": "user", "content": None}])


def test_syntax_error_names_the_line():
    with pytest.raises(DataError, match="chat template line 2: "):
        ChatTemplate("ok\n{% if %}", {})


def test_strftime_now_gives_todays_date_when_none_is_passed():
    text = ChatTemplate(_template("llama32"), {"bos_token": "<|begin_of_text|>"}).render(USER)
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in text


def test_loop_controls_and_generation_blocks():
    template = ChatTemplate("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
                            "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}", {})
    assert template.render(USER + [{"role": "user", "content": "dropped"}]) == "Hi"


def test_sandbox_refuses_unsafe_attributes():
    with pytest.raises(DataError, match="chat template: "):
        ChatTemplate("{{ messages.__class__.__mro__ }}", {}).render(USER)
