"""GET /v2/models/{name}/config: a model's Triton configuration, read from `<repo>/<name>/config.pbtxt`.

export/triton.py writes that file from the ONNX graph, so Triton can serve the same artifacts; this module
reads it back into the JSON form of Triton's ModelConfig (what Triton answers, and tritonclient's
`get_model_config` returns). Two fields are this server's own rather than the file's: `max_batch_size` and
`dynamic_batching` state the batching `cxr serve` really does (its settings), which a file written for
Triton cannot know. The file is checked against the served graph (name, input and output names); a model
without a file, or with one that does not describe it, is answered 404 with the reason: there is nothing
honest to report.

The reader covers protobuf text format as Triton's configs use it (fields, nested messages, `[ ]` lists,
strings, numbers, enum names, comments); a field given in brackets or more than once is a list, and so are
ModelConfig's repeated fields written once without brackets. Integers come out as JSON numbers, which
protobuf's JSON parser accepts for its 64-bit fields too.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from service.errors import NotFound

CONFIG_FILE = "config.pbtxt"
_REPEATED = frozenset({"input", "output", "instance_group", "dims", "preferred_batch_size", "gpus"})
_TOKEN = re.compile(
    r"""\s+|\#[^\n]*
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
    |(?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<mark>[{}\[\]:,;<>])""",
    re.VERBOSE,
)


class ConfigSyntaxError(ValueError):
    """The file is not protobuf text format as this reader understands it."""


def _tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ConfigSyntaxError(f"unexpected character at offset {position}")
        position = match.end()
        if match.lastgroup is not None:
            found.append((match.lastgroup, match.group()))
    return found


class _Reader:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, *expected: str) -> str:
        value = self.peek()[1]
        if expected and value not in expected:
            raise ConfigSyntaxError(f"expected {' or '.join(expected)}, found {value or 'the end'!r}")
        self.at += 1
        return value

    def message(self, closing: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        while self.peek()[1] != (closing or ""):
            kind, name = self.peek()
            if kind != "word":
                raise ConfigSyntaxError(f"expected a field name, found {name or 'the end'!r}")
            self.take()
            if self.peek()[1] == ":":
                self.take()
            listed = self.peek()[1] == "["
            values = self.items() if listed else [self.value()]
            if name in fields or listed or name in _REPEATED:
                previous = fields.get(name, [])
                fields[name] = [*(previous if isinstance(previous, list) else [previous]), *values]
            else:
                fields[name] = values[0]
            if self.peek()[1] in (",", ";"):
                self.take()
        if closing:
            self.take(closing)
        return fields

    def items(self) -> list[Any]:
        self.take("[")
        values: list[Any] = []
        while self.peek()[1] != "]":
            values.append(self.value())
            if self.peek()[1] == ",":
                self.take()
        self.take("]")
        return values

    def value(self) -> Any:
        kind, token = self.peek()
        if token in ("{", "<"):
            self.take()
            return self.message("}" if token == "{" else ">")
        self.take()
        if kind == "string":
            return token[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        if kind == "number":
            return float(token) if any(mark in token for mark in ".eE") else int(token)
        if kind == "word":
            return {"true": True, "false": False}.get(token, token)  # enum names stay strings
        raise ConfigSyntaxError(f"expected a value, found {token or 'the end'!r}")


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Protobuf text format -> a dict in protobuf's JSON shape (see the module docstring)."""
    return _Reader(text).message(None)


@functools.cache
def _read(path: Path, modified_ns: int) -> dict[str, Any]:
    del modified_ns  # part of the cache key only: an edited file is read again
    return parse_pbtxt(path.read_text())


def model_config(
    model_root: Path,
    *,
    name: str,
    input_names: list[str],
    output_names: list[str],
    max_batch_size: int,
    preferred_batch_sizes: list[int],
    max_queue_delay_ms: float,
) -> dict[str, Any]:
    """The served model's ModelConfig as JSON, or NotFound saying why there is none to give."""
    path = model_root / CONFIG_FILE
    if not path.is_file():
        raise NotFound(f"Model {name!r} has no {CONFIG_FILE} in the model repository.")
    try:
        config = dict(_read(path, path.stat().st_mtime_ns))
    except (ConfigSyntaxError, OSError, UnicodeDecodeError) as error:
        raise NotFound(f"The {CONFIG_FILE} of model {name!r} cannot be read: {error}.") from None
    described = (
        config.get("name"),
        sorted(str(tensor.get("name")) for tensor in config.get("input", []) if isinstance(tensor, dict)),
        sorted(str(tensor.get("name")) for tensor in config.get("output", []) if isinstance(tensor, dict)),
    )
    if described != (name, sorted(input_names), sorted(output_names)):
        raise NotFound(
            f"The {CONFIG_FILE} of model {name!r} does not describe the served model (name, inputs or "
            "outputs differ); regenerate it with `python -m export.triton`."
        )
    config["max_batch_size"] = max_batch_size
    config["dynamic_batching"] = {
        "preferred_batch_size": preferred_batch_sizes,
        "max_queue_delay_microseconds": round(max_queue_delay_ms * 1000),
    }
    return config
