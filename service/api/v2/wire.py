"""Open Inference Protocol v2 infer bodies -> the input tensor; output tensors -> response bodies.

Two body forms (KServe v2 REST, and Triton's binary tensor data extension, which tritonclient uses by
default):
- JSON: `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?}`;
- binary: that JSON header, its length in the `Inference-Header-Content-Length` request header, then the raw
  little-endian bytes of each input that says `"parameters": {"binary_data_size": N}` instead of `data`.
An output comes back as raw bytes after the JSON header when it asks `"parameters": {"binary_data": true}`,
or when the request says `"parameters": {"binary_data_output": true}` and names no outputs; the response
then has `Inference-Header-Content-Length` too.

Both forms get the same checks: one FP32 input named as the model's, shape [N, S, S, 1] with
1 <= N <= the images one request may queue (413 above it, naming the limit: such a batch can never
succeed), exactly N*S*S values, all finite. Decisions: data is a flat list in row-major order (nested
arrays cost a container per pixel and long garbage-collector pauses, so they are refused, as are
`true`/`false`/`null` and strings among the numbers); NaN and Infinity are refused in JSON (where they
are not valid) and in binary data (not pixels); values outside [0, 1] are accepted (the model card's
preprocessing produces [0, 1]). Every malformed body is a 400 that says what is wrong, never a 500.

`parse` runs in a worker thread (service.api.v2.routes), and is written so that it never holds the GIL for long,
which would stall the event loop just as parsing on it does: json's C scanner calls back into Python for
every number (`parse_float`/`parse_int`), where the interpreter can switch to the event loop thread, and a
byte count before parsing bounds what the scanner does without calling back (containers, keys, values),
so deep nesting never reaches the recursion limit and memory stays within the largest valid request.
Numbers are converted and checked in slices, for the same reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import MalformedRequest, PayloadTooLarge

DATATYPE = "FP32"
_WIRE_DTYPE = np.dtype("<f4")
_MAX_NUMBER_CHARS = 64
"""Longer numbers carry no more FP32 precision; float() on thousands of digits costs milliseconds each."""
_MAX_CONTAINERS = 256
"""Arrays and objects in one JSON text: a valid request has about ten."""
_MAX_KEYS = 1024
_SLICE = 65536
"""Values converted per step: a few milliseconds of GIL each."""


@dataclass(frozen=True)
class InputSpec:
    """What a model accepts: its input's name, the image side S, its outputs, and the most images one
    request may carry (the queue capacity: a larger batch could never be queued)."""

    name: str
    size: int
    outputs: tuple[str, ...]
    max_images: int

    @property
    def image_values(self) -> int:
        return self.size * self.size


@dataclass(frozen=True)
class InferRequest:
    """A validated infer request: the (N, S, S, 1) float32 tensor and the outputs wanted, with whether each
    goes back as binary data."""

    id: str | None
    tensor: np.ndarray
    outputs: tuple[tuple[str, bool], ...]


class _Refused(ValueError):
    """Raised from the JSON scanner's callbacks; its message is the client's answer."""


def _number(text: str) -> float:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _Refused(f"a JSON number is longer than {_MAX_NUMBER_CHARS} characters")
    return float(text)


def _integer(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _Refused(f"a JSON number is longer than {_MAX_NUMBER_CHARS} characters")
    return int(text)


def _constant(text: str) -> Any:
    raise _Refused(f"{text} is not a JSON value, and tensor data must be finite")


def _load(text: bytes, spec: InputSpec) -> dict[str, Any]:
    """The JSON object in `text`, within the bounds described in the module docstring."""
    # bytes.count runs at memory speed: it bounds the work below before any of it is done. A string
    # holding many commas or brackets is refused too; no valid request has one.
    # Twice the largest valid request, so that a batch just over the limit is parsed and answered with
    # its size (_shape); far beyond it, the count answers.
    most_values = 2 * spec.max_images * spec.image_values + _MAX_KEYS
    if text.count(b",") > most_values:
        raise PayloadTooLarge(
            f"The JSON holds far more values than {spec.max_images} images of {spec.size}x{spec.size}x1, this "
            f"server's limit of {spec.max_images} images per request (its queue capacity)."
        )
    if text.count(b"[") + text.count(b"{") > _MAX_CONTAINERS:
        raise MalformedRequest(
            f"The JSON holds more than {_MAX_CONTAINERS} arrays and objects: tensor data must be one flat "
            "array in row-major order."
        )
    if text.count(b":") > _MAX_KEYS:
        raise MalformedRequest(f"The JSON holds more than {_MAX_KEYS} keys.")
    try:
        document = json.loads(text, parse_float=_number, parse_int=_integer, parse_constant=_constant)
    except _Refused as error:
        raise MalformedRequest(f"The v2 infer body is refused: {error}.") from None
    except RecursionError:  # the container count above keeps this out of reach; kept as a last guard
        raise MalformedRequest("The v2 infer body is nested too deeply.") from None
    except UnicodeDecodeError:
        raise MalformedRequest("The v2 infer body is not UTF-8 JSON.") from None
    except ValueError as error:  # json.JSONDecodeError: its message gives a position, never the content
        raise MalformedRequest(f"The v2 infer body is not valid JSON: {error}.") from None
    if not isinstance(document, dict):
        raise MalformedRequest("The v2 infer body must be a JSON object.")
    return document


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRequest(f"{what} must be a JSON object.")
    return value


def _shape(spec: InputSpec, tensor: dict[str, Any]) -> int:
    """N from a valid [N, S, S, 1] shape; 413 when N is over the per-request image limit."""
    size = spec.size
    shape = tensor.get("shape")
    if (
        not (
            isinstance(shape, list) and len(shape) == 4 and all(type(dim) is int for dim in shape)  # not bool
        )
        or shape[1:] != [size, size, 1]
    ):
        raise MalformedRequest(f"Input shape must be [N, {size}, {size}, 1]; got {shape!r}."[:300])
    count: int = shape[0]
    if count < 1:
        raise MalformedRequest("The batch dimension N must be at least 1.")
    if count > spec.max_images:
        raise PayloadTooLarge(
            f"A batch of {count} images is over this server's limit of {spec.max_images} images per request "
            "(its queue capacity): it could never be queued. Send at most "
            f"{spec.max_images} images per request."
        )
    return count


def _from_json(data: Any, count: int, spec: InputSpec) -> np.ndarray:
    expected = count * spec.image_values
    if not isinstance(data, list):
        raise MalformedRequest("Input `data` must be a flat array of numbers in row-major order.")
    if len(data) != expected:
        raise MalformedRequest(
            f"Input data holds {len(data)} values; shape [{count}, {spec.size}, {spec.size}, 1] needs {expected}."
        )
    flat = np.empty(expected, dtype=np.float32)
    for start in range(0, expected, _SLICE):
        part = data[start : start + _SLICE]
        if not set(map(type, part)) <= {float, int}:  # bool is not int here: `true` is refused
            raise MalformedRequest("Input data must hold numbers only (a flat array in row-major order).")
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # out of FP32 range -> inf, refused below
                flat[start : start + _SLICE] = part
        except (OverflowError, ValueError, TypeError):
            raise MalformedRequest("Input data holds a number outside the FP32 range.") from None
    return flat


def _from_binary(body: bytes, offset: int, size: Any, count: int, spec: InputSpec) -> np.ndarray:
    expected = count * spec.image_values * _WIRE_DTYPE.itemsize
    if type(size) is not int or size != expected:
        raise MalformedRequest(
            f"binary_data_size is {size!r}; an FP32 tensor of shape [{count}, {spec.size}, {spec.size}, 1] "
            f"is {expected} bytes."[:300]
        )
    if len(body) - offset != size:
        raise MalformedRequest(
            f"The body holds {len(body) - offset} bytes after the JSON header; the input declares {size}."
        )
    # A view of the body, not a copy: the batcher copies each image into its batch.
    return np.frombuffer(body, dtype=_WIRE_DTYPE, count=count * spec.image_values, offset=offset)


def _outputs(document: dict[str, Any], spec: InputSpec) -> tuple[tuple[str, bool], ...]:
    parameters = _object(document.get("parameters"), "Request `parameters`")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise MalformedRequest("`binary_data_output` must be true or false.")
    requested = document.get("outputs")
    if requested is None:
        return tuple((name, binary_default) for name in spec.outputs)
    if not isinstance(requested, list) or not requested:
        raise MalformedRequest("`outputs` must be a non-empty array of {name} objects.")
    chosen: list[tuple[str, bool]] = []
    for item in requested:
        if not isinstance(item, dict) or item.get("name") not in spec.outputs:
            name = item.get("name") if isinstance(item, dict) else item
            raise MalformedRequest(f"Unknown output {name!r}; this model has {list(spec.outputs)}."[:300])
        options = _object(item.get("parameters"), "Output `parameters`")
        if "classification" in options:
            raise MalformedRequest("The classification extension is not supported; ask for probabilities.")
        binary = options.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise MalformedRequest("Output `binary_data` must be true or false.")
        chosen.append((str(item["name"]), binary))
    return tuple(chosen)


def parse(body: bytes, header_length: int | None, spec: InputSpec) -> InferRequest:
    """Validate a v2 infer body (JSON, or JSON header plus binary data when `header_length` is given).

    Raises MalformedRequest (400) for anything malformed, PayloadTooLarge (413) for more images or values
    than one request may carry. Runs in a worker thread."""
    if header_length is not None and header_length > len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length ({header_length}) is more than the body ({len(body)} bytes)."
        )
    end = len(body) if header_length is None else header_length
    document = _load(body[:end], spec)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequest("The request `id` must be a string.")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise MalformedRequest(f"Expected exactly one input tensor in `inputs`, named {spec.name!r}.")
    tensor = inputs[0]
    if tensor.get("name") != spec.name:
        raise MalformedRequest(
            f"Unknown input {tensor.get('name')!r}; this model's input is {spec.name!r}."[:300]
        )
    if tensor.get("datatype") != DATATYPE:
        raise MalformedRequest(f"Input datatype must be {DATATYPE}; got {tensor.get('datatype')!r}."[:300])
    count = _shape(spec, tensor)
    options = _object(tensor.get("parameters"), "Input `parameters`")
    if "binary_data_size" in options:
        if header_length is None:
            raise MalformedRequest("binary_data_size needs the Inference-Header-Content-Length header.")
        if "data" in tensor:
            raise MalformedRequest("An input has either `data` or binary_data_size, not both.")
        flat = _from_binary(body, end, options["binary_data_size"], count, spec)
    else:
        if end != len(body):
            raise MalformedRequest(
                f"The body holds {len(body) - end} bytes after the JSON header, and no input declares "
                "binary_data_size."
            )
        flat = _from_json(tensor.get("data"), count, spec)
    if not np.isfinite(flat).all():
        raise MalformedRequest("Input data holds NaN, infinite or out-of-FP32-range values.")
    shaped = flat.reshape(count, spec.size, spec.size, 1)
    return InferRequest(request_id, shaped, _outputs(document, spec))


def _json_numbers(values: np.ndarray) -> str:
    """A JSON array of the values, encoded a slice at a time (each slice is one short C call)."""
    flat = values.ravel()
    parts = [json.dumps(flat[start : start + _SLICE].tolist())[1:-1] for start in range(0, flat.size, _SLICE)]
    return "[" + ",".join(part for part in parts if part) + "]"


def render(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray, bool]],
    parameters: dict[str, Any],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None).

    `outputs` are (name, array, as binary); every array is sent as FP32."""
    entries: list[str] = []
    binary: list[bytes] = []
    for name, array, as_binary in outputs:
        head = f'"name":{json.dumps(name)},"datatype":"{DATATYPE}","shape":{json.dumps(list(array.shape))}'
        if as_binary:
            raw = np.ascontiguousarray(array, dtype=_WIRE_DTYPE).tobytes()
            binary.append(raw)
            entries.append("{" + head + f',"parameters":{{"binary_data_size":{len(raw)}}}}}')
        else:
            entries.append("{" + head + ',"data":' + _json_numbers(array.astype(np.float32)) + "}")
    fields = [f'"model_name":{json.dumps(model_name)}', f'"model_version":{json.dumps(model_version)}']
    if request_id is not None:
        fields.append(f'"id":{json.dumps(request_id)}')
    fields.append('"outputs":[' + ",".join(entries) + "]")
    fields.append(f'"parameters":{json.dumps(parameters)}')
    header = ("{" + ",".join(fields) + "}").encode()
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)
