"""Small builders for IR objects, so tests state only what they are about."""

from __future__ import annotations

from albingress.ir import (
    IR,
    Action,
    Condition,
    FixedResponseAction,
    ForwardAction,
    GroupSource,
    Listener,
    PathMatch,
    PathType,
    Protocol,
    Rule,
    Scheduler,
    Server,
    ServerGroup,
    StickySession,
    WeightedGroup,
)


def servers(n: int, *, weight: int = 100, net: int = 1) -> tuple[Server, ...]:
    """``n`` loopback servers 127.0.<net>.1.. on port 8080."""
    return tuple(
        Server(address=f"127.0.{net}.{i + 1}", port=8080, weight=weight, server_id=f"s{i + 1}")
        for i in range(n)
    )


def group(
    gid: str,
    members: tuple[Server, ...],
    *,
    scheduler: Scheduler = Scheduler.WRR,
    sticky: StickySession | None = None,
    uch_key: str = "",
) -> ServerGroup:
    return ServerGroup(
        id=gid,
        name=gid,
        source=GroupSource.SERVER_GROUP,
        protocol=Protocol.HTTP,
        scheduler=scheduler,
        servers=members,
        sticky=sticky or StickySession(),
        uch_key=uch_key,
    )


def forward(*pairs: tuple[str, int], sticky: bool = False, timeout: int = 1000) -> ForwardAction:
    return ForwardAction(
        tuple(WeightedGroup(g, w) for g, w in pairs), sticky=sticky, sticky_timeout=timeout
    )


def rule(
    name: str,
    *,
    host: str = "",
    path: str | None = "/",
    path_type: PathType = PathType.PREFIX,
    conditions: tuple[Condition, ...] = (),
    actions: tuple[Action, ...] | None = None,
) -> Rule:
    return Rule(
        name=name,
        ingress="default/ing",
        order=10,
        host=host,
        path=None if path is None else PathMatch(path_type, path),
        conditions=conditions,
        actions=actions or (FixedResponseAction(content=name),),
    )


def ir_of(
    rules: tuple[Rule, ...] | list[Rule] = (),
    groups: tuple[ServerGroup, ...] | list[ServerGroup] = (),
    *,
    port: int = 80,
) -> IR:
    return IR(
        listeners=(Listener(port, "HTTP", tuple(rules)),),
        server_groups=tuple(sorted(groups, key=lambda g: g.id)),
    )
