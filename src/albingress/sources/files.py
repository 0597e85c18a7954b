"""The files source: Kubernetes YAML files and directories read into a :class:`Snapshot`.

Multi-document files, directories walked recursively (``*.yaml``, ``*.yml``, ``*.json``; hidden
files and directories skipped), ``List`` objects unwrapped. Unknown kinds are skipped; unreadable
files, malformed YAML and objects without a name become diagnostics, never exceptions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from albingress.diagnostics import Diagnostic, ObjectRef, Severity
from albingress.sources.snapshot import CLUSTER_SCOPED, KINDS, K8sObject, Snapshot

try:  # the C loader is several times faster; fall back when libyaml is absent
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment,unused-ignore]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def manifest_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Diagnostic]]:
    """Every manifest file under ``paths``, sorted, and diagnostics for paths that do not exist."""
    found: list[Path] = []
    problems: list[Diagnostic] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.endswith(MANIFEST_SUFFIXES) and not name.startswith("."):
                        found.append(Path(root) / name)
        elif path.is_file():
            found.append(path)
        else:
            problems.append(_file_problem(str(path), "File.NotFound", "no such file or directory"))
    return sorted(set(found)), problems


def _file_problem(file: str, code: str, message: str) -> Diagnostic:
    return Diagnostic(code, Severity.ERROR, ObjectRef("File", "", file, file), "", message)


def parse_documents(text: str, file: str) -> tuple[list[K8sObject], list[Diagnostic]]:
    """Objects of the kinds we read, from the text of one (multi-document) YAML file."""
    objects: list[K8sObject] = []
    problems: list[Diagnostic] = []
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(
            _file_problem(file, "File.InvalidYAML", f"malformed YAML{where}: {problem}")
        )
        return objects, problems
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        for item in _unwrap(doc):
            obj, problem = _to_object(item, file, index)
            if obj is not None:
                objects.append(obj)
            if problem is not None:
                problems.append(problem)
    return objects, problems


def _unwrap(doc: Any) -> Iterator[Any]:
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        yield from doc["items"]
    else:
        yield doc


def _to_object(doc: Any, file: str, index: int) -> tuple[K8sObject | None, Diagnostic | None]:
    if not isinstance(doc, dict):
        return None, _file_problem(
            file,
            "File.NotAnObject",
            f"document {index + 1} is a {type(doc).__name__}, "
            "not a Kubernetes object (a mapping with apiVersion and kind)",
        )
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return None, _file_problem(
            file, "File.NotAnObject", f"document {index + 1} has no apiVersion or kind"
        )
    if kind not in KINDS:
        return None, None  # not ours: skipped on purpose
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name")
    namespace = meta.get("namespace") or "default"
    if kind in CLUSTER_SCOPED:
        namespace = ""
    ref = ObjectRef(kind, "" if kind in CLUSTER_SCOPED else str(namespace), str(name or "?"), file)
    if api_version not in KINDS[kind]:
        want = " or ".join(KINDS[kind])
        return None, Diagnostic(
            "Object.UnsupportedVersion",
            Severity.WARNING,
            ref,
            "apiVersion",
            f"apiVersion {api_version!r} of {kind} is not read (expected {want}); skipped",
        )
    if not isinstance(name, str) or not name:
        return None, Diagnostic(
            "Object.MissingName",
            Severity.ERROR,
            ref,
            "metadata.name",
            f"{kind} in document {index + 1} has no metadata.name",
        )
    if not isinstance(namespace, str):
        return None, Diagnostic(
            "Object.InvalidNamespace",
            Severity.ERROR,
            ref,
            "metadata.namespace",
            "metadata.namespace must be a string",
        )
    return K8sObject(kind, namespace, name, doc, file), None


def load(paths: Iterable[str | Path]) -> Snapshot:
    """Read every manifest under ``paths`` into a snapshot (objects sorted, problems attached)."""
    files, problems = manifest_files(paths)
    objects: list[K8sObject] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path in files:
        file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(_file_problem(file, "File.Unreadable", f"cannot read: {exc}"))
            continue
        found, found_problems = parse_documents(text, file)
        problems.extend(found_problems)
        for obj in found:
            if obj.key in seen:
                problems.append(
                    Diagnostic(
                        "Object.Duplicate",
                        Severity.WARNING,
                        obj.ref,
                        "metadata.name",
                        f"{obj.kind} {obj.ref.key} is also defined in {seen[obj.key]}; "
                        "this definition wins",
                    )
                )
            seen[obj.key] = file
            objects.append(obj)
    return Snapshot.build(objects, problems)
