"""ir.errors: located messages and the one conversion of pydantic validation errors."""
from __future__ import annotations

import pydantic
import pytest

from ir.errors import ConfigError, Location, RduflowError, config_error, first_line


class _Options(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    rate: float = pydantic.Field(1.0, gt=0.0)
    name: str = "x"
    save_dir: str | None = None
    resume: bool = False

    @pydantic.field_validator("name")
    @classmethod
    def _short(cls, name: str) -> str:
        if len(name) > 3:
            raise ValueError("Is longer than 3 characters")
        return name

    @pydantic.model_validator(mode="after")
    def _resume_needs_save_dir(self) -> _Options:
        if self.resume and self.save_dir is None:
            raise ValueError("resume: needs save_dir")
        return self


def _error(**values) -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as err:
        _Options(**values)
    return err.value


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


@pytest.mark.parametrize("values, label, show_input, message", [
    ({"rate": -1}, str, False, "rate: input should be greater than 0"),
    ({"rate": -1}, _flag, True, "--rate: input should be greater than 0 (got -1)"),
    ({"name": "long"}, _flag, False, "--name: is longer than 3 characters"),
    ({"resume": True}, _flag, False, "--resume: needs --save-dir"),
    ({"bogus": 1}, "option '{}'".format, False, "option 'bogus': extra inputs are not permitted"),
])
def test_config_error_names_the_field_through_its_label(values, label, show_input, message):
    err = config_error(_error(**values), label, show_input)
    assert isinstance(err, ConfigError) and err.message == message and str(err) == f"error: {message}"


def test_a_located_error_renders_its_source_line_and_caret():
    err = RduflowError("bad", Location("m.rdl", 2, 5), "  x = y")
    assert err.render() == "m.rdl:2:5: error: bad\n  x = y\n    ^"


@pytest.mark.parametrize("err, line", [
    (OSError("Unable to open file\n  (details on a second line)"), "Unable to open file"),
    (ValueError("\n  padded  \n"), "padded"),
    (KeyError(), "KeyError"),
])
def test_first_line_of_an_error(err, line):
    assert first_line(err) == line
