"""Property tests: the parsers never raise, and compiling is deterministic in any file order."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albingress import ir
from albingress.compile.compiler import compile_snapshot
from albingress.diagnostics import Collector, ObjectRef
from albingress.model.actions import parse_actions
from albingress.model.annotations import parse_options
from albingress.model.conditions import parse_conditions
from albingress.model.ingress import parse_ingress
from albingress.sources import files
from albingress.sources.snapshot import K8sObject, Snapshot

REF = ObjectRef("Ingress", "default", "fuzz")
KEYS = [
    "Type",
    "type",
    "ForwardConfig",
    "ServerGroups",
    "ServiceName",
    "ServicePort",
    "Weight",
    "ServerGroupID",
    "RedirectConfig",
    "HttpCode",
    "Values",
    "Key",
    "Value",
    "QPS",
    "Enabled",
    "Timeout",
    "ServerGroupStickySession",
    "FixedResponseConfig",
    "MirrorGroupConfig",
]
TYPES = [
    "ForwardGroup",
    "forwardgroup",
    "Redirect",
    "FixedResponse",
    "InsertHeader",
    "RemoveHeader",
    "Rewrite",
    "TrafficMirror",
    "TrafficLimit",
    "Header",
    "Cookie",
    "Method",
    "SourceIp",
    "Host",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(TYPES),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_parsers_never_raise_on_arbitrary_text(text: str) -> None:
    parse_actions(text, "a", Collector(REF))
    parse_conditions(text, "c", Collector(REF))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_parsers_never_raise_on_arbitrary_json(value: Any) -> None:
    text = json.dumps(value)
    for edition in ("Basic", "Standard"):
        parse_actions(text, "a", Collector(REF), edition)
    parse_conditions(text, "c", Collector(REF), response=True)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "alb.ingress.kubernetes.io/" + k
                for k in (
                    "order",
                    "listen-ports",
                    "canary",
                    "canary-weight",
                    "healthcheck-path",
                    "healthcheck-interval-seconds",
                    "backend-scheduler",
                    "sticky-session",
                    "traffic-limit-qps",
                    "traffic-limit-ip-qps",
                    "actions.fwd",
                    "conditions.fwd",
                    "healthcheck-httpcode",
                    "cookie-timeout",
                )
            ]
        ),
        st.text(max_size=40) | json_values.map(json.dumps),
        max_size=8,
    ),
    json_values,
)
def test_ingress_parser_never_raises(annotations: dict[str, str], spec: Any) -> None:
    diag = Collector(REF)
    parse_options(annotations, diag)
    body = {"metadata": {"name": "fuzz", "annotations": annotations}, "spec": spec}
    obj = K8sObject("Ingress", "default", "fuzz", body)
    parse_ingress(obj, diag)
    compile_snapshot(Snapshot.build([obj]))


SEED = Path(__file__).parents[2] / "examples" / "seed"


def _documents() -> list[str]:
    docs = []
    for path in sorted(SEED.rglob("*.yaml")):
        if "scenario" in path.parent.name and path.parent.name != "scenario4":
            continue
        docs.extend(d for d in path.read_text().split("\n---\n") if d.strip())
    testdata = Path(__file__).parent / "testdata"
    for case in ("paths-precedence", "conditions", "hosts"):
        text = (testdata / case / "in.yaml").read_text()
        for d in text.split("---\n"):
            if d.strip() and "kind: Ingress" in d:
                docs.append(d.replace("name: ", f"name: {case}-", 1))
    return docs


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.randoms(use_true_random=False))
def test_compile_is_deterministic_in_any_file_order(
    tmp_path_factory: Any, rnd: random.Random
) -> None:
    docs = _documents()
    reference = compile_snapshot(files.load([_write(tmp_path_factory.mktemp("a"), docs, 1)]))
    assert sum(len(lst.rules) for lst in reference.ir.listeners) >= 8  # the input is not trivial
    shuffled = list(docs)
    rnd.shuffle(shuffled)
    directory = tmp_path_factory.mktemp("b")
    paths = [_write(directory, [d], i) for i, d in enumerate(shuffled)]
    rnd.shuffle(paths)
    again = compile_snapshot(files.load(paths))
    assert ir.to_json(again.ir) == ir.to_json(reference.ir)
    assert sorted(_diag_keys(again)) == sorted(_diag_keys(reference))


def _write(directory: Path, docs: list[str], index: int) -> str:
    path = directory / f"f{index:03d}.yaml"
    path.write_text("\n---\n".join(docs))
    return str(path)


def _diag_keys(result: Any) -> list[tuple[str, str, str, str, str]]:
    return [(d.code, d.obj.kind, d.obj.name, d.field, d.message) for d in result.diagnostics]
