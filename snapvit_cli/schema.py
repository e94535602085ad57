"""Strict, bounded reading of JSON records that may come from strangers (bundle metadata, ``config.json``, reports).

Every persisted record (:mod:`snapvit_cli.elastic.records`, :mod:`snapvit_cli.evaluation.report`,
:mod:`snapvit_cli.models.source`) is read through :func:`parse_json` and a :class:`Fields` view, so a wrong type, a
NaN, a number out of range, an unknown key or nesting deeper than :data:`MAX_NESTING` is one :class:`BundleError`
line, never a traceback, a ``RecursionError`` or an allocation the file did not pay for. Imports neither torch nor
timm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from snapvit_cli.errors import BundleError

MAX_NESTING = 8  # objects/arrays inside each other; the deepest record written today nests 5 levels
MAX_JSON_CHARS = 4 << 20  # metadata of a ViT-7B bundle is a few kB; eval reports with many rows stay far below
MAX_STRING = 4096
MAX_ITEMS = 100_000  # elements of one array or members of one object
_MISSING = object()


def parse_json(text: str | bytes, what: str) -> Any:
    """``json.loads`` for untrusted text: bounded size and nesting, no NaN/Infinity, errors as one line."""
    if len(text) > MAX_JSON_CHARS:
        raise BundleError(f"{what} is {len(text)} characters long; at most {MAX_JSON_CHARS} are read")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise BundleError(f"{what} nests deeper than {MAX_NESTING} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and the NaN refusals below
        raise BundleError(f"{what} is not valid JSON ({exc})") from None
    check_data(data, what)
    return data


def check_data(data: Any, what: str) -> None:
    """Raise unless ``data`` is plain JSON data (finite numbers) nesting at most :data:`MAX_NESTING` levels.

    Iterative, so that a hostile depth cannot exhaust the interpreter's stack.
    """
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_NESTING:
                raise BundleError(f"{what} nests deeper than {MAX_NESTING} levels")
            if len(value) > MAX_ITEMS:
                raise BundleError(f"{what} has a container of {len(value)} items; at most {MAX_ITEMS}")
            if isinstance(value, dict):
                if not all(isinstance(k, str) for k in value):
                    raise BundleError(f"{what} has a non-string key")
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise BundleError(f"{what} contains NaN or infinity")
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                raise BundleError(f"{what} has a string of {len(value)} characters; at most {MAX_STRING}")
        elif not (value is None or isinstance(value, bool | int)):
            raise BundleError(f"{what} holds a {type(value).__name__}, not JSON data")


def as_data(value: Any, what: str) -> Any:
    """``value`` as plain JSON data (tuples become lists), for writers; NaN or a non-JSON type is a BundleError."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{what} cannot be stored as JSON ({exc})") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number snapvit accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


class Fields:
    """A typed, strict view of one JSON object: every getter checks type and range; :meth:`done` refuses the rest.

    ``where`` names the object in messages (``source.model_args``), so an error says exactly which field is wrong.
    """

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise BundleError(f"{where} must be a JSON object, not {_kind(data)}")
        self.data: dict[str, Any] = data
        self.where = where
        self._seen: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise BundleError(f"{self.where} lacks '{key}'")
        return default

    def has(self, key: str) -> bool:
        return key in self.data

    def int(self, key: str, lo: int, hi: int, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        return check_int(value, f"{self.where}.{key}", lo, hi)

    def float(self, key: str, lo: float, hi: float, default: Any = _MISSING, *, open_lo: bool = False) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        return check_float(value, f"{self.where}.{key}", lo, hi, open_lo=open_lo)

    def str(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        return check_str(value, f"{self.where}.{key}", choices=choices)

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, bool):
            raise BundleError(f"{self.where}.{key} must be true or false, not {_kind(value)}")
        return value

    def ints(self, key: str, lo: int, hi: int, length: int | None = None, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        return check_ints(value, f"{self.where}.{key}", lo, hi, length)

    def floats(self, key: str, lo: float, hi: float, length: int, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        name = f"{self.where}.{key}"
        if not isinstance(value, list) or len(value) != length:
            raise BundleError(f"{name} must be a list of {length} numbers")
        return [check_float(v, name, lo, hi) for v in value]

    def obj(self, key: str, default: Any = _MISSING) -> Any:
        """A nested object as :class:`Fields` (``default`` when absent)."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        return Fields(value, f"{self.where}.{key}")

    def data_of(self, key: str, default: Any = _MISSING) -> Any:
        """Free-form JSON data (e.g. a scoring method's settings): shown to people, never passed to code."""
        value = self._get(key, default)
        check_data(value, f"{self.where}.{key}")
        return value

    def done(self) -> None:
        """Refuse keys that no getter asked for: metadata carries nothing the reader does not understand."""
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise BundleError(f"{self.where} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")


def check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{name} must be an integer, not {_kind(value)}")
    if not lo <= value <= hi:
        raise BundleError(f"{name} must lie in [{lo}, {hi}], got {_short(value)}")
    return value


def check_float(value: Any, name: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BundleError(f"{name} must be a number, not {_kind(value)}")
    value = float(value)
    if not math.isfinite(value) or value < lo or value > hi or (open_lo and value == lo):
        raise BundleError(f"{name} must lie in {'(' if open_lo else '['}{lo:g}, {hi:g}], got {_short(value)}")
    return value


def check_str(value: Any, name: str, *, choices: Iterable[str] | None = None) -> str:
    if not isinstance(value, str):
        raise BundleError(f"{name} must be a string, not {_kind(value)}")
    if len(value) > MAX_STRING:
        raise BundleError(f"{name} is longer than {MAX_STRING} characters")
    if choices is not None and value not in set(choices):
        raise BundleError(f"{name} must be one of {', '.join(sorted(choices))}, got {_short(value)}")
    return value


def check_ints(value: Any, name: str, lo: int, hi: int, length: int | None = None) -> list[int]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        count = f"{length} " if length is not None else ""
        raise BundleError(f"{name} must be a list of {count}integers")
    if len(value) > MAX_ITEMS:
        raise BundleError(f"{name} has more than {MAX_ITEMS} entries")
    return [check_int(v, name, lo, hi) for v in value]


def optional_str(fields: Fields, key: str) -> str | None:
    """A string field that may be absent or null."""
    value = fields.data.get(key)
    fields._seen.add(key)
    return None if value is None else check_str(value, f"{fields.where}.{key}")


def sorted_json(data: Mapping[str, Any]) -> str:
    """Canonical JSON text: sorted keys, no spaces; the same record always gives the same bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
