"""Reading untyped JSON/YAML into typed values, recording every problem.

ALB Ingress is written in Go, whose JSON decoder matches object keys case-insensitively
(``ForwardConfig`` and ``forwardConfig`` are the same field) and ignores unknown keys. We match the
same way, and report unknown keys as warnings since they are almost always typos.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from albingress.diagnostics import Collector

_MISSING: Any = object()

# RFC 6265 cookie-name: an RFC 9110 token (StickySession's cookie)
COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Fields:
    """A JSON object read with case-insensitive keys; remembers which keys were used.

    ``where`` is the field path of the object, used in diagnostics (``...ForwardConfig``).
    """

    __slots__ = ("_by_fold", "_used", "data", "diag", "where")

    def __init__(self, data: Mapping[str, Any], where: str, diag: Collector) -> None:
        self.data = data
        self.where = where
        self.diag = diag
        self._by_fold: dict[str, str] = {}
        for key in data:
            self._by_fold.setdefault(str(key).casefold(), key)
        self._used: set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def has(self, name: str) -> bool:
        return name.casefold() in self._by_fold

    def raw(self, name: str, default: Any = None) -> Any:
        key = self._by_fold.get(name.casefold(), _MISSING)
        if key is _MISSING:
            return default
        self._used.add(key)
        return self.data[key]

    def obj(self, name: str, code: str, *, required: bool = False) -> Fields | None:
        value = self.raw(name)
        if value is None:
            if required:
                self.diag.error(code, self.path(name), f"{name} is required")
            return None
        if not isinstance(value, Mapping):
            self.diag.error(code, self.path(name), f"{name} must be an object, not {_kind(value)}")
            return None
        return Fields(value, self.path(name), self.diag)

    def array(self, name: str, code: str, *, required: bool = False) -> list[Any] | None:
        value = self.raw(name)
        if value is None:
            if required:
                self.diag.error(code, self.path(name), f"{name} is required")
            return None
        if not isinstance(value, list):
            self.diag.error(code, self.path(name), f"{name} must be an array, not {_kind(value)}")
            return None
        return value

    def string(self, name: str, code: str, *, default: str = "", required: bool = False) -> str:
        value = self.raw(name)
        if value is None:
            if required:
                self.diag.error(code, self.path(name), f"{name} is required")
            return default
        if not isinstance(value, str):
            self.diag.error(code, self.path(name), f"{name} must be a string, not {_kind(value)}")
            return default
        return value

    def boolean(self, name: str, code: str, *, default: bool = False) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.diag.error(code, self.path(name), f"{name} must be true or false, not {value!r}")
        return default

    def integer(
        self,
        name: str,
        code: str,
        *,
        lo: int,
        hi: int,
        default: int | None = None,
        required: bool = False,
        allow_string: bool = False,
        missing_code: str = "",
    ) -> int | None:
        """An integer in [lo, hi]; None (after a diagnostic) when missing or wrong."""
        value = self.raw(name)
        if value is None:
            if required:
                self.diag.error(missing_code or code, self.path(name), f"{name} is required")
            return default
        number = as_int(value, allow_string=allow_string)
        if number is None:
            self.diag.error(code, self.path(name), f"{name} must be an integer, not {_show(value)}")
            return None
        if not lo <= number <= hi:
            self.diag.error(
                code, self.path(name), f"{name} must be between {lo} and {hi}, not {number}"
            )
            return None
        return number

    def warn_unknown(self, known: Iterable[str], code: str) -> None:
        """Warn about keys that are neither known nor were read."""
        folded = {k.casefold() for k in known}
        for key in self.data:
            if key not in self._used and str(key).casefold() not in folded:
                self.diag.warn(code, self.path(str(key)), f"unknown field {key!r} is ignored")


def as_int(value: Any, *, allow_string: bool = False) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if allow_string and isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit() and text.isascii():
            return int(text)
    return None


def parse_json(text: str, where: str, code: str, diag: Collector) -> Any:
    """Decode a JSON annotation value; a diagnostic (and ``None``) when it is malformed."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        pos = ""
        if isinstance(exc, json.JSONDecodeError):
            pos = f" at line {exc.lineno}, column {exc.colno}"
        diag.error(code, where, f"malformed JSON{pos}: {detail}")
        return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return "null"


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
