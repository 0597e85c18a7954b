"""``albingress webhook``: a validating admission webhook for Ingresses of our class.

The API server POSTs an ``admission.k8s.io/v1`` AdmissionReview; the Ingress in it is compiled
exactly as ``albingress validate`` compiles a manifest, and an Ingress with errors is denied with
the same lines ``validate`` prints. Problems that depend on other objects (a Service, a
ServerGroup or an AlbConfig listener not there yet: ``kubectl apply -f dir/`` creates them in any
order) do not deny: they come back as admission warnings, which kubectl prints.

Ingresses of another class, other kinds and DELETEs are allowed untouched. TLS as the API server
requires (``--tls-cert``/``--tls-key``, mounted from a Secret); plain HTTP only for tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from albingress.compile.compiler import CompileOptions, compile_snapshot
from albingress.diagnostics import ConfigError, Diagnostic
from albingress.model.ingress import ALB_CONTROLLER, LEGACY_CLASS_ANNOTATION
from albingress.model.servergroup import NetworkSettings
from albingress.sources.snapshot import K8sObject, Snapshot

log = logging.getLogger("albingress.webhook")

# Problems about objects other than the Ingress itself: warned about, never denied.
CONTEXT_CODES = frozenset(
    {
        "Backend.ServiceNotFound",
        "Backend.ServicePortNotFound",
        "Backend.ServerGroupNotFound",
        "Backend.ServerGroupInvalid",
        "Backend.NoEndpoints",
        "Ingress.ListenerNotFound",
    }
)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _line(d: Diagnostic) -> str:
    return d.line().removeprefix("-: ")


def review(
    doc: Any, classes: Sequence[str] = ("alb",), network: NetworkSettings | None = None
) -> dict[str, Any]:
    """The AdmissionReview answer to one AdmissionReview request."""
    request = doc.get("request") if isinstance(doc, dict) else None
    if not isinstance(request, dict):
        raise ValueError("not an AdmissionReview: no request")
    answer: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    envelope = {
        "apiVersion": doc.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": answer,
    }
    obj = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if request.get("operation") == "DELETE" or kind != "Ingress" or not isinstance(obj, dict):
        return envelope
    meta = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    annotations = _mapping(meta.get("annotations"))
    wanted = spec.get("ingressClassName") or annotations.get(LEGACY_CLASS_ANNOTATION)
    if wanted not in classes:
        return envelope
    namespace = str(meta.get("namespace") or request.get("namespace") or "default")
    name = str(meta.get("name") or request.get("name") or "")
    body = {**obj, "metadata": {**meta, "namespace": namespace, "name": name}}
    objects = [K8sObject("Ingress", namespace, name, body)]
    for cls in classes:
        ic = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": cls},
            "spec": {"controller": ALB_CONTROLLER},
        }
        objects.append(K8sObject("IngressClass", "", cls, ic))
    options = CompileOptions(network=network or NetworkSettings(), embedded=False)
    result = compile_snapshot(Snapshot.build(objects), options)
    mine = [d for d in result.diagnostics if d.obj.kind == "Ingress" and d.obj.name == name]
    denied = [d for d in mine if d.is_error and d.code not in CONTEXT_CODES]
    warnings = [_line(d) for d in mine if d not in denied]
    if warnings:
        answer["warnings"] = warnings[:20]
    if denied:
        answer["allowed"] = False
        answer["status"] = {
            "code": 403,
            "reason": "Invalid",
            "message": "\n".join(_line(d) for d in denied),
        }
    return envelope


def make_app(classes: Sequence[str], network: NetworkSettings) -> web.Application:
    async def validate(request: web.Request) -> web.Response:
        try:
            doc = json.loads(await request.read())
            answer = review(doc, classes, network)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        response = answer["response"]
        if not response["allowed"]:
            log.info("denied Ingress: %s", response["status"]["message"])
        return web.json_response(answer)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/validate", validate)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(
    host: str,
    port: int,
    classes: Sequence[str],
    network: NetworkSettings,
    tls: ssl.SSLContext | None = None,
) -> int:
    runner = web.AppRunner(make_app(classes, network), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    log.info("admission webhook on %s://%s:%d/validate", "https" if tls else "http", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("webhook", help="validating admission webhook for Ingresses")
    p.add_argument("--listen", default="127.0.0.1:9443", metavar="HOST:PORT")
    p.add_argument("--tls-cert", help="PEM certificate (required by the API server)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument(
        "--ingress-class", action="append", metavar="NAME", help="our class names (default alb)"
    )
    p.add_argument("--vpc-cidr", action="append", metavar="CIDR")
    p.add_argument("--remote-cidr", action="append", metavar="CIDR")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=main)


def main(args: Any) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--listen {args.listen!r}: expected HOST:PORT")
    try:
        network = NetworkSettings.from_strings(
            tuple(args.vpc_cidr or ()), tuple(args.remote_cidr or ())
        )
    except ValueError as exc:
        raise ConfigError(f"bad CIDR: {exc}") from exc
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    classes = tuple(args.ingress_class or ("alb",))
    return asyncio.run(serve(host.strip("[]") or "127.0.0.1", int(port), classes, network, tls))
