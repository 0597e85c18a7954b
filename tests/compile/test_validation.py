"""Every validation error, table-driven: the input, and the code it must produce."""

from __future__ import annotations

import json
from typing import Any

import pytest

from albingress.diagnostics import Collector, ObjectRef
from albingress.model.actions import parse_actions
from albingress.model.annotations import parse_options
from albingress.model.conditions import parse_conditions
from albingress.model.servergroup import NetworkSettings, parse_server_group

REF = ObjectRef("Ingress", "default", "t")


def fwd(*groups: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"Type": "ForwardGroup", "ForwardConfig": {"ServerGroups": list(groups), **extra}}


SVC = {"ServiceName": "tea-svc", "ServicePort": 80, "Weight": 50}
SVC2 = {"ServiceName": "coffee-svc", "ServicePort": 80, "Weight": 50}
HDR = {"Type": "InsertHeader", "InsertHeaderConfig": {"Key": "x-a", "Value": "1"}}

ACTION_ERRORS: dict[str, tuple[Any, str]] = {
    "malformed json": ("[{", "Action.InvalidJSON"),
    "not an array": ({"Type": "ForwardGroup"}, "Action.NotAnArray"),
    "empty array": ([], "Action.NoFinalAction"),
    "action not an object": (["ForwardGroup"], "Action.NotAnObject"),
    "missing type": ([{"ForwardConfig": {}}], "Action.MissingType"),
    "unknown type": ([{"Type": "Teleport"}], "Action.UnknownType"),
    "missing config": ([{"Type": "ForwardGroup"}], "Forward.MissingConfig"),
    "no server groups": ([fwd()], "ForwardGroup.MissingServerGroups"),
    "six server groups": (
        [fwd(*({"ServerGroupID": f"sgp-a{i}", "Weight": 10} for i in range(6)))],
        "ForwardGroup.TooManyServerGroups",
    ),
    "entry with neither id nor service": (
        [fwd({"Weight": 10}, SVC)],
        "ForwardGroup.MissingServerGroup",
    ),
    "entry not an object": ([fwd("tea-svc")], "ForwardGroup.InvalidServerGroup"),
    "weight missing with two entries": (
        [fwd({"ServiceName": "a", "ServicePort": 80}, SVC)],
        "ForwardGroup.WeightRequired",
    ),
    "weight over 100": ([fwd({**SVC, "Weight": 101}, SVC2)], "ForwardGroup.InvalidWeight"),
    "weight negative": ([fwd({**SVC, "Weight": -5}, SVC2)], "ForwardGroup.InvalidWeight"),
    "weight as string": ([fwd({**SVC, "Weight": "50"}, SVC2)], "ForwardGroup.InvalidWeight"),
    "weight as bool": ([fwd({**SVC, "Weight": True}, SVC2)], "ForwardGroup.InvalidWeight"),
    "service port missing": ([fwd({"ServiceName": "a"})], "ForwardGroup.MissingServicePort"),
    "service port out of range": (
        [fwd({"ServiceName": "a", "ServicePort": 70000})],
        "ForwardGroup.InvalidServicePort",
    ),
    "service port as object": (
        [fwd({"ServiceName": "a", "ServicePort": {}})],
        "ForwardGroup.InvalidServicePort",
    ),
    "bad server group id": ([fwd({"ServerGroupID": "sg-1"})], "ForwardGroup.InvalidServerGroupID"),
    "duplicate group": ([fwd(SVC, SVC)], "ForwardGroup.DuplicateServerGroup"),
    "sticky timeout zero": (
        [fwd(SVC, SVC2, ServerGroupStickySession={"Enabled": True, "Timeout": 0})],
        "ForwardGroup.InvalidStickyTimeout",
    ),
    "sticky timeout too long": (
        [fwd(SVC, SVC2, ServerGroupStickySession={"Enabled": True, "Timeout": 86401})],
        "ForwardGroup.InvalidStickyTimeout",
    ),
    "sticky enabled not bool": (
        [fwd(SVC, SVC2, ServerGroupStickySession={"Enabled": "yes"})],
        "ForwardGroup.InvalidStickySession",
    ),
    "two final actions": (
        [fwd(SVC), {"Type": "FixedResponse", "FixedResponseConfig": {"HttpCode": 200}}],
        "Action.MultipleFinalActions",
    ),
    "no final action": ([HDR], "Action.NoFinalAction"),
    "final not last": ([fwd(SVC), HDR], "Action.Order"),
    "traffic limit not first": (
        [HDR, {"Type": "TrafficLimit", "TrafficLimitConfig": {"QPS": "5"}}, fwd(SVC)],
        "Action.Order",
    ),
    "six actions on standard": ([HDR] * 5 + [fwd(SVC)], "Action.TooMany"),
    "rewrite without forward": (
        [
            {"Type": "Rewrite", "RewriteConfig": {"Path": "/x"}},
            {"Type": "FixedResponse", "FixedResponseConfig": {"HttpCode": 200}},
        ],
        "Action.RewriteWithoutForward",
    ),
    "rewrite relative path": (
        [{"Type": "Rewrite", "RewriteConfig": {"Path": "x"}}, fwd(SVC)],
        "Rewrite.InvalidPath",
    ),
    "redirect loop": (
        [{"Type": "Redirect", "RedirectConfig": {"HttpCode": "301"}}],
        "Redirect.Loop",
    ),
    "redirect bad code": (
        [{"Type": "Redirect", "RedirectConfig": {"HttpCode": "304", "Protocol": "HTTPS"}}],
        "Redirect.InvalidHttpCode",
    ),
    "redirect bad protocol": (
        [{"Type": "Redirect", "RedirectConfig": {"Protocol": "FTP"}}],
        "Redirect.InvalidProtocol",
    ),
    "redirect bad port": (
        [{"Type": "Redirect", "RedirectConfig": {"Port": "99999"}}],
        "Redirect.InvalidPort",
    ),
    "redirect relative path": (
        [{"Type": "Redirect", "RedirectConfig": {"Path": "x"}}],
        "Redirect.InvalidPath",
    ),
    "fixed response missing code": (
        [{"Type": "FixedResponse", "FixedResponseConfig": {"Content": "x"}}],
        "FixedResponse.InvalidHttpCode",
    ),
    "fixed response 3xx": (
        [{"Type": "FixedResponse", "FixedResponseConfig": {"HttpCode": 302}}],
        "FixedResponse.InvalidHttpCode",
    ),
    "fixed response content type": (
        [
            {
                "Type": "FixedResponse",
                "FixedResponseConfig": {"HttpCode": 200, "ContentType": "image/png"},
            }
        ],
        "FixedResponse.InvalidContentType",
    ),
    "fixed response too long": (
        [
            {
                "Type": "FixedResponse",
                "FixedResponseConfig": {"HttpCode": 200, "Content": "x" * 1025},
            }
        ],
        "FixedResponse.ContentTooLong",
    ),
    "insert header bad key": (
        [{"Type": "InsertHeader", "InsertHeaderConfig": {"Key": "a b", "Value": "1"}}, fwd(SVC)],
        "InsertHeader.InvalidKey",
    ),
    "insert header reserved key": (
        [{"Type": "InsertHeader", "InsertHeaderConfig": {"Key": "Host", "Value": "1"}}, fwd(SVC)],
        "InsertHeader.InvalidKey",
    ),
    "insert header bad value type": (
        [
            {
                "Type": "InsertHeader",
                "InsertHeaderConfig": {"Key": "x", "Value": "1", "ValueType": "Magic"},
            },
            fwd(SVC),
        ],
        "InsertHeader.InvalidValueType",
    ),
    "insert header bad system value": (
        [
            {
                "Type": "InsertHeader",
                "InsertHeaderConfig": {"Key": "x", "Value": "Moon", "ValueType": "SystemDefined"},
            },
            fwd(SVC),
        ],
        "InsertHeader.InvalidValue",
    ),
    "remove header missing key": (
        [{"Type": "RemoveHeader", "RemoveHeaderConfig": {}}, fwd(SVC)],
        "RemoveHeader.InvalidKey",
    ),
    "mirror bad target": (
        [
            {
                "Type": "TrafficMirror",
                "TrafficMirrorConfig": {
                    "TargetType": "Elsewhere",
                    "MirrorGroupConfig": {"ServerGroupTuples": [{"ServerGroupID": "sgp-a"}]},
                },
            },
            fwd(SVC),
        ],
        "TrafficMirror.InvalidTargetType",
    ),
    "mirror no groups": (
        [
            {
                "Type": "TrafficMirror",
                "TrafficMirrorConfig": {"MirrorGroupConfig": {"ServerGroupTuples": []}},
            },
            fwd(SVC),
        ],
        "TrafficMirror.MissingServerGroup",
    ),
    "limit qps zero": (
        [{"Type": "TrafficLimit", "TrafficLimitConfig": {"QPS": "0"}}, fwd(SVC)],
        "TrafficLimit.InvalidQPS",
    ),
    "limit qps not number": (
        [{"Type": "TrafficLimit", "TrafficLimitConfig": {"QPS": "many"}}, fwd(SVC)],
        "TrafficLimit.InvalidQPS",
    ),
    "limit per ip above total": (
        [{"Type": "TrafficLimit", "TrafficLimitConfig": {"QPS": "5", "QPSPerIp": "5"}}, fwd(SVC)],
        "TrafficLimit.InvalidQPSPerIp",
    ),
}


@pytest.mark.parametrize("case", list(ACTION_ERRORS), ids=list(ACTION_ERRORS))
def test_action_errors(case: str) -> None:
    value, code = ACTION_ERRORS[case]
    text = value if isinstance(value, str) else json.dumps(value)
    diag = Collector(REF)
    assert parse_actions(text, "ann", diag) is None
    codes = [d.code for d in diag.items if d.is_error]
    assert code in codes, f"{case}: expected {code}, got {codes}"


def test_basic_edition_caps_at_three() -> None:
    diag = Collector(REF)
    assert parse_actions(json.dumps([HDR] * 3 + [fwd(SVC)]), "ann", diag, "Basic") is None
    assert [d.code for d in diag.items] == ["Action.TooMany"]
    ok = Collector(REF)
    assert parse_actions(json.dumps([HDR] * 2 + [fwd(SVC)]), "ann", ok, "Basic") is not None


def test_seed_forward_group_parses_with_seed_spelling() -> None:
    text = '[{"type": "ForwardGroup", "ForwardConfig": {"ServerGroups": [{"ServiceName": "tea-svc", "Weight": 30, "ServicePort": 80}, {"ServerGroupID": "sgp-71aexb9y93ypo*****", "Weight": 30}]}}]'
    diag = Collector(REF)
    parsed = parse_actions(text, "ann", diag)
    assert parsed is not None and not diag.items
    (forward,) = parsed
    assert [(g.service_name, g.server_group_id, g.weight) for g in forward.groups] == [  # type: ignore[union-attr]
        ("tea-svc", "", 30),
        ("", "sgp-71aexb9y93ypo*****", 30),
    ]


CONDITION_ERRORS: dict[str, tuple[Any, str]] = {
    "malformed json": ("[", "Condition.InvalidJSON"),
    "not an array": ({}, "Condition.NotAnArray"),
    "unknown type": ([{"Type": "Weather"}], "Condition.UnknownType"),
    "missing config": ([{"Type": "Header"}], "Condition.MissingConfig"),
    "empty values": (
        [{"Type": "Method", "MethodConfig": {"Values": []}}],
        "Condition.InvalidMethod",
    ),
    "bad method": (
        [{"Type": "Method", "MethodConfig": {"Values": ["FETCH"]}}],
        "Condition.InvalidMethod",
    ),
    "bad source ip": (
        [{"Type": "SourceIp", "SourceIpConfig": {"Values": ["10.0.0.300"]}}],
        "Condition.InvalidSourceIp",
    ),
    "bad host": ([{"Type": "Host", "HostConfig": {"Values": ["a b"]}}], "Condition.InvalidHost"),
    "relative path": ([{"Type": "Path", "PathConfig": {"Values": ["x"]}}], "Condition.InvalidPath"),
    "header without key": (
        [{"Type": "Header", "HeaderConfig": {"Values": ["1"]}}],
        "Condition.InvalidHeader",
    ),
    "cookie without key": (
        [{"Type": "Cookie", "CookieConfig": {"Values": [{"Value": "1"}]}}],
        "Condition.InvalidCookie",
    ),
    "too many values": (
        [{"Type": "Method", "MethodConfig": {"Values": ["GET"] * 6}}],
        "Condition.InvalidMethod",
    ),
    "response type on request rule": (
        [{"Type": "ResponseStatusCode", "ResponseStatusCodeConfig": {"Values": ["200"]}}],
        "Condition.ResponseTypeOnRequestRule",
    ),
}


@pytest.mark.parametrize("case", list(CONDITION_ERRORS), ids=list(CONDITION_ERRORS))
def test_condition_errors(case: str) -> None:
    value, code = CONDITION_ERRORS[case]
    text = value if isinstance(value, str) else json.dumps(value)
    diag = Collector(REF)
    assert parse_conditions(text, "ann", diag) is None
    assert code in [d.code for d in diag.items if d.is_error]


P = "alb.ingress.kubernetes.io/"
ANNOTATION_ERRORS: dict[str, tuple[dict[str, str], str]] = {
    "order zero": ({P + "order": "0"}, "Annotation.InvalidValue"),
    "order words": ({P + "order": "first"}, "Annotation.InvalidValue"),
    "listen ports not json": ({P + "listen-ports": "HTTP:80"}, "Annotation.InvalidJSON"),
    "listen ports bad protocol": ({P + "listen-ports": '[{"UDP": 53}]'}, "Annotation.InvalidValue"),
    "canary weight over 100": (
        {P + "canary": "true", P + "canary-weight": "150"},
        "Annotation.InvalidValue",
    ),
    "canary without strategy": ({P + "canary": "true"}, "Canary.NoStrategy"),
    "canary header value without header": (
        {P + "canary": "true", P + "canary-weight": "5", P + "canary-by-header-value": "x"},
        "Annotation.MissingValue",
    ),
    "healthcheck interval 0": (
        {P + "healthcheck-interval-seconds": "0"},
        "Annotation.InvalidValue",
    ),
    "healthcheck timeout 301": (
        {P + "healthcheck-timeout-seconds": "301"},
        "Annotation.InvalidValue",
    ),
    "healthy threshold 1": ({P + "healthy-threshold-count": "1"}, "Annotation.InvalidValue"),
    "unhealthy threshold 11": ({P + "unhealthy-threshold-count": "11"}, "Annotation.InvalidValue"),
    "healthcheck method": ({P + "healthcheck-method": "PUT"}, "Annotation.InvalidValue"),
    "healthcheck protocol": ({P + "healthcheck-protocol": "UDP"}, "Annotation.InvalidValue"),
    "healthcheck codes": ({P + "healthcheck-httpcode": "200"}, "Annotation.InvalidValue"),
    "healthcheck path": ({P + "healthcheck-path": "health"}, "Annotation.InvalidValue"),
    "scheduler": ({P + "backend-scheduler": "random"}, "Annotation.InvalidValue"),
    "uch without key": ({P + "backend-scheduler": "uch"}, "Annotation.MissingValue"),
    "sticky not bool": ({P + "sticky-session": "yes"}, "Annotation.InvalidValue"),
    "cookie timeout": ({P + "cookie-timeout": "0"}, "Annotation.InvalidValue"),
    "server sticky without cookie": (
        {P + "sticky-session": "true", P + "sticky-session-type": "Server"},
        "Annotation.MissingValue",
    ),
    "sticky cookie not a cookie name": (
        {P + "sticky-session": "true", P + "sticky-session-type": "Server", P + "cookie": "сессия"},
        "Annotation.InvalidValue",
    ),
    "sticky cookie with a separator": ({P + "cookie": "a;b"}, "Annotation.InvalidValue"),
    "ip qps above qps": (
        {P + "traffic-limit-qps": "5", P + "traffic-limit-ip-qps": "9"},
        "Annotation.InvalidValue",
    ),
    "ip qps alone": ({P + "traffic-limit-ip-qps": "9"}, "Annotation.MissingValue"),
    "backend protocol": ({P + "backend-protocol": "ftp"}, "Annotation.InvalidValue"),
}


@pytest.mark.parametrize("case", list(ANNOTATION_ERRORS), ids=list(ANNOTATION_ERRORS))
def test_annotation_errors(case: str) -> None:
    annotations, code = ANNOTATION_ERRORS[case]
    diag = Collector(REF)
    parse_options(annotations, diag)
    assert code in [d.code for d in diag.items if d.is_error], [d.code for d in diag.items]


def test_annotation_defaults_follow_the_reference() -> None:
    diag = Collector(REF)
    opts = parse_options({}, diag)
    assert not diag.items
    assert opts.order == 10
    hc = opts.health_check
    assert (
        hc.path,
        hc.method,
        hc.timeout,
        hc.interval,
        hc.healthy_threshold,
        hc.unhealthy_threshold,
    ) == ("/", "HEAD", 5, 2, 3, 3)
    assert opts.sticky.cookie_timeout == 1000


SG_BASE = {"serverGroupId": "sgp-abc", "serverGroupType": "Ip"}
SERVER_GROUP_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "bad id": ({**SG_BASE, "serverGroupId": "sgp-ABC"}, "ServerGroup.InvalidId"),
    "bad type": ({**SG_BASE, "serverGroupType": "Vm"}, "ServerGroup.InvalidType"),
    "bad name": ({**SG_BASE, "serverGroupName": "1x"}, "ServerGroup.InvalidName"),
    "bad protocol": ({**SG_BASE, "protocol": "FTP"}, "ServerGroup.InvalidProtocol"),
    "bad scheduler": ({**SG_BASE, "scheduler": "Random"}, "ServerGroup.InvalidScheduler"),
    "uch without key": ({**SG_BASE, "scheduler": "Uch"}, "ServerGroup.InvalidUchConfig"),
    "hc interval": (
        {**SG_BASE, "healthCheckConfig": {"healthCheckInterval": 51}},
        "ServerGroup.InvalidHealthCheck",
    ),
    "hc path": (
        {**SG_BASE, "healthCheckConfig": {"healthCheckPath": "x"}},
        "ServerGroup.InvalidHealthCheck",
    ),
    "sticky cookie name": (
        {
            **SG_BASE,
            "stickySessionConfig": {
                "stickySessionEnabled": True,
                "stickySessionType": "Server",
                "cookie": "sess ion",
            },
        },
        "ServerGroup.InvalidStickySession",
    ),
    "sticky type": (
        {**SG_BASE, "stickySessionConfig": {"stickySessionType": "Magic"}},
        "ServerGroup.InvalidStickySession",
    ),
    "ecs in ip group": (
        {**SG_BASE, "servers": [{"serverType": "Ecs", "serverIp": "127.0.0.5", "port": 80}]},
        "Mismatch.ServerGroupType",
    ),
    "ip in instance group": (
        {
            **SG_BASE,
            "serverGroupType": "Instance",
            "servers": [{"serverType": "Ip", "serverIp": "127.0.0.5", "port": 80}],
        },
        "Mismatch.ServerGroupType",
    ),
    "port zero": (
        {**SG_BASE, "servers": [{"serverIp": "127.0.0.5", "port": 0}]},
        "ServerGroup.InvalidServer",
    ),
    "weight 101": (
        {**SG_BASE, "servers": [{"serverIp": "127.0.0.5", "port": 80, "weight": 101}]},
        "ServerGroup.InvalidServer",
    ),
    "not an ip": (
        {**SG_BASE, "servers": [{"serverIp": "example.com", "port": 80}]},
        "ServerGroup.AddressNotAllowed",
    ),
    "remote without flag": (
        {**SG_BASE, "servers": [{"serverIp": "10.1.2.3", "port": 80}]},
        "ServerGroup.AddressNotAllowed",
    ),
    "public address": (
        {**SG_BASE, "servers": [{"serverIp": "8.8.8.8", "port": 80, "remoteIpEnabled": True}]},
        "ServerGroup.AddressNotAllowed",
    ),
    "duplicate server": (
        {**SG_BASE, "servers": [{"serverIp": "127.0.0.5", "port": 80}] * 2},
        "ServerGroup.DuplicateServer",
    ),
    "remote in instance group": (
        {
            **SG_BASE,
            "serverGroupType": "Instance",
            "servers": [
                {"serverType": "Ecs", "serverIp": "127.0.0.5", "port": 80, "remoteIpEnabled": True}
            ],
        },
        "ServerGroup.InvalidServer",
    ),
}


@pytest.mark.parametrize("case", list(SERVER_GROUP_ERRORS), ids=list(SERVER_GROUP_ERRORS))
def test_server_group_errors(case: str) -> None:
    spec, code = SERVER_GROUP_ERRORS[case]
    diag = Collector(ObjectRef("ServerGroup", "default", "g"))
    assert parse_server_group(spec, diag, NetworkSettings()) is None
    assert code in [d.code for d in diag.items if d.is_error], [d.code for d in diag.items]


def test_remote_server_accepted_in_remote_ranges() -> None:
    diag = Collector(ObjectRef("ServerGroup", "default", "g"))
    spec = {**SG_BASE, "servers": [{"serverIp": "10.1.2.3", "port": 80, "remoteIpEnabled": True}]}
    group = parse_server_group(spec, diag, NetworkSettings())
    assert group is not None and group.servers[0].remote


@pytest.mark.parametrize(("check", "warned"), [("HTTP", True), ("HTTPS", False), ("TCP", False)])
def test_https_groups_checked_in_plain_http_are_warned_about(check: str, warned: bool) -> None:
    diag = Collector(REF)
    parse_options(
        {P + "backend-protocol": "https", P + "healthcheck-enabled": "true",
         P + "healthcheck-protocol": check},
        diag,
    )  # fmt: skip
    assert ("Annotation.PlainHealthCheck" in [d.code for d in diag.items]) is warned
    diag = Collector(ObjectRef("ServerGroup", "default", "g"))
    spec = {
        **SG_BASE,
        "protocol": "HTTPS",
        "healthCheckConfig": {"healthCheckEnabled": True, "healthCheckProtocol": check},
    }
    assert parse_server_group(spec, diag, NetworkSettings()) is not None
    assert ("ServerGroup.PlainHealthCheck" in [d.code for d in diag.items]) is warned
