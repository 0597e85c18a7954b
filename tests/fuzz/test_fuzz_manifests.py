"""Property-based fuzzing of the manifest path: YAML text -> objects -> annotations -> IR.

Inputs are the compiler's golden inputs (``tests/compile/testdata/*/in.yaml``) mutated line by
line and byte by byte, and Ingresses whose annotations are drawn from the ALB annotation names
with hostile values. Properties, for any input:

* reading and compiling never raise: every problem is a Diagnostic with a code and a message;
* the result is deterministic (compiling twice gives the same IR and diagnostics) and the IR is
  JSON-serialisable (what ``plan`` and ``/api/v1/config`` print);
* an Ingress, however broken, drops only its own rules: the rules of a valid Ingress next to it
  are exactly what they are without it.

The budget is set in ``conftest.py`` (``ALBINGRESS_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from albingress import ir
from albingress.compile.compiler import CompileOptions, CompileResult, compile_snapshot
from albingress.sources.files import parse_documents
from albingress.sources.snapshot import Snapshot
from tests.fuzz.conftest import FUZZ

# Files are read as UTF-8 (``sources.files.load``): lone surrogates can never reach the parser.
CHARS = st.characters(blacklist_categories=("Cs",))
SEEDS = sorted((Path(__file__).parents[1] / "compile" / "testdata").glob("*/in.yaml"))
SEED_TEXTS = [p.read_text() for p in SEEDS]

ANNOTATIONS = [
    "actions.fwd",
    "conditions.fwd",
    "listen-ports",
    "backend-protocol",
    "healthcheck-enabled",
    "healthcheck-path",
    "healthcheck-interval-seconds",
    "sticky-session",
    "sticky-session-type",
    "cookie-timeout",
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-cookie",
    "canary-weight",
    "order",
    "rewrite-target",
    "ssl-redirect",
    "traffic-limit-qps",
    "backend-scheduler",
    "backend-keepalive",
    "use-regex",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "true",
            "false",
            "0",
            "-1",
            "100",
            "101",
            "1e309",
            "NaN",
            "[]",
            "{}",
            "null",
            '[{"HTTP": 80}]',
            '[{"HTTP": 99999}]',
            '[{"Type": "ForwardGroup", "ForwardConfig": {"ServerGroups": [{"ServiceName":'
            ' "tea-svc", "ServicePort": 80, "Weight": 50}]}}]',
            '[{"Type": "ForwardGroup", "ForwardConfig": {"ServerGroups": [{"ServerGroupID":'
            ' "sgp-x", "Weight": -5}]}}]',
            '[{"Type": "Redirect", "RedirectConfig": {"HttpCode": "999"}}]',
            '[{"Type": "Header", "HeaderConfig": {"Key": "", "Values": [null]}}]',
            "/$1/$2/${3}",
            "(",
            "\x00",
            "\u202e",
            "a" * 5000,
        ]
    ),
    st.text(CHARS, max_size=40),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(CHARS, max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(CHARS, max_size=8), inner)
        ),
        max_leaves=10,
    ).map(json.dumps),
)

GOOD = """\
apiVersion: v1
kind: Service
metadata: {name: tea-svc, namespace: default}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: tea-svc-1
  namespace: default
  labels: {kubernetes.io/service-name: tea-svc}
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["127.0.1.1"], conditions: {ready: true}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: good, namespace: default}
spec:
  ingressClassName: alb
  rules:
  - host: good.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: tea-svc, port: {number: 80}}}}
"""


def compile_text(text: str, file: str = "fuzz.yaml") -> CompileResult:
    objects, problems = parse_documents(text, file)
    return compile_snapshot(Snapshot.build(objects, problems), CompileOptions())


def check(result: CompileResult) -> None:
    for d in result.diagnostics:
        assert d.code and d.message, d
        assert d.line()
    json.dumps(ir.to_json(result.ir))
    json.dumps([d.to_json() for d in result.diagnostics])


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(SEED_TEXTS)).splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=max(0, len(lines) - 1)))
        how = draw(st.sampled_from(["drop", "dup", "replace", "indent", "flip", "value"]))
        if not lines:
            break
        line = lines[at]
        if how == "drop":
            del lines[at]
        elif how == "dup":
            lines.insert(at, line)
        elif how == "replace":
            lines[at] = draw(st.text(CHARS, max_size=30))
        elif how == "indent":
            lines[at] = " " * draw(st.integers(0, 6)) + line.lstrip()
        elif how == "flip" and line:
            i = draw(st.integers(0, len(line) - 1))
            lines[at] = line[:i] + draw(CHARS) + line[i + 1 :]
        elif how == "value" and ":" in line:
            key = line.split(":", 1)[0]
            lines[at] = f"{key}: {json.dumps(draw(VALUES))}"
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=mutated())
def test_mutated_manifests_never_raise_and_compile_deterministically(text: str) -> None:
    first = compile_text(text)
    check(first)
    second = compile_text(text)
    assert first.ir == second.ir
    assert first.diagnostics == second.diagnostics


def fuzzed_ingress(annotations: dict[str, str], host: str, path: str) -> str:
    meta = {
        "name": "fuzzed",
        "namespace": "default",
        "annotations": {f"alb.ingress.kubernetes.io/{k}": v for k, v in annotations.items()},
    }
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta,
        "spec": {
            "ingressClassName": "alb",
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": path,
                                "pathType": "Prefix",
                                "backend": {
                                    "service": {"name": "fwd", "port": {"name": "use-annotation"}}
                                },
                            }
                        ]
                    },
                }
            ],
        },
    }
    return json.dumps(body)  # JSON is YAML


def _rules_of(result: CompileResult, ingress: str) -> list[ir.Rule]:
    return [
        rule
        for listener in result.ir.listeners
        for rule in listener.rules
        if rule.ingress == f"default/{ingress}"
    ]


GOOD_RESULT = compile_text(GOOD, "good.yaml")


@FUZZ
@given(
    annotations=st.dictionaries(st.sampled_from(ANNOTATIONS), VALUES, max_size=5),
    host=st.sampled_from(["fuzz.example.com", "*.example.com", "", "UPPER.example.com", "a..b"]),
    path=st.sampled_from(["/", "/x", "", "x", "/(.*)", "/\x00"]),
)
def test_a_broken_ingress_drops_only_its_own_rules(
    annotations: dict[str, str], host: str, path: str
) -> None:
    objects, problems = parse_documents(GOOD, "good.yaml")
    more, more_problems = parse_documents(fuzzed_ingress(annotations, host, path), "fuzz.yaml")
    result = compile_snapshot(
        Snapshot.build([*objects, *more], [*problems, *more_problems]), CompileOptions()
    )
    check(result)
    good = _rules_of(GOOD_RESULT, "good")
    assert good
    assert _rules_of(result, "good") == good
    assert not any(d.obj.name == "good" and d.is_error for d in result.diagnostics)
