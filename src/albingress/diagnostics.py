"""Problems in user input, as data.

A problem found in a manifest or an annotation is a :class:`Diagnostic` returned with the result,
never an exception escaping a layer: one broken Ingress must not stop the others.

Exceptions of the project itself (bugs, I/O failures) form a small tree::

    AlbingressError
    ├── ConfigError        a setting or command-line value is unusable
    └── StateError         the state file is corrupt, foreign or locked
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AlbingressError(Exception):
    """Base of every exception albingress raises on purpose."""


class ConfigError(AlbingressError):
    """A setting or command-line value is unusable."""


class StateError(AlbingressError):
    """The state file is corrupt, foreign, or cannot be written."""


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object a diagnostic is about."""

    kind: str  # "Ingress", "ServerGroup", ..., or "File" for unreadable input
    namespace: str  # "" for cluster-scoped objects and files
    name: str
    file: str = ""  # where it was read from; "" when not from a file

    def display(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem: a stable code, a severity, the object and field, and a message for people."""

    code: str  # dotted, stable, e.g. "ForwardGroup.WeightRequired"
    severity: Severity
    obj: ObjectRef
    field: str  # path inside the object, e.g. "metadata.annotations[...].ForwardConfig"
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def line(self) -> str:
        """The one-line form used by ``validate``: ``FILE: KIND NS/NAME: CODE: message``."""
        where = self.obj.file or "-"
        sev = "" if self.is_error else "warning: "
        field = f" (at {self.field})" if self.field else ""
        return f"{where}: {self.obj.display()}: {self.code}: {sev}{self.message}{field}"

    def to_json(self) -> dict[str, str]:
        return {
            "file": self.obj.file,
            "kind": self.obj.kind,
            "namespace": self.obj.namespace,
            "name": self.obj.name,
            "code": self.code,
            "severity": self.severity.value,
            "field": self.field,
            "message": self.message,
        }

    def sort_key(self) -> tuple[str, str, str, str, str, str]:
        return (
            self.obj.file,
            self.obj.kind,
            self.obj.namespace,
            self.obj.name,
            self.field,
            self.code,
        )


class Collector:
    """Accumulates diagnostics about one object; validation collects every problem."""

    __slots__ = ("items", "obj")

    def __init__(self, obj: ObjectRef) -> None:
        self.obj = obj
        self.items: list[Diagnostic] = []

    def error(self, code: str, field: str, message: str) -> None:
        self.items.append(Diagnostic(code, Severity.ERROR, self.obj, field, message))

    def warn(self, code: str, field: str, message: str) -> None:
        self.items.append(Diagnostic(code, Severity.WARNING, self.obj, field, message))

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)
