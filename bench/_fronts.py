"""Configurations for the benchmark's processes: two nginx backends and three fronts.

Every front carries the same rule: host ``demo.domain.ingress.top``, path prefix ``/path``,
80/20 weighted over backend A (127.0.1.1) and backend B (127.0.1.2), keep-alive upstream pools,
one worker. Anything else gets a 404.

- nginx: ``upstream`` with weight=4 / weight=1 (smooth weighted round robin), ``keepalive``.
- Envoy: ``weighted_clusters`` 80/20 (random per request), HTTP/1.1 upstream connection pools.
- albingress: an Ingress with the seed's ``alb.ingress.kubernetes.io/actions.forward``
  annotation over two Services whose EndpointSlices point at the backends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from _procs import Processes, free_port_on_all, require_loopback, wait_tcp

HOST = "demo.domain.ingress.top"
PATH = "/path"
BACKEND_A = "127.0.1.1"
BACKEND_B = "127.0.1.2"
BODY_A = "backend-a"
BODY_B = "backend-b"
WEIGHT_A = 80
WEIGHT_B = 20


@dataclass(frozen=True, slots=True)
class Backends:
    port: int  # the same port on BACKEND_A and BACKEND_B


def _nginx_common(workdir: Path, name: str) -> str:
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
"""


def _nginx_http_common(workdir: Path, name: str) -> str:
    tmp = workdir / f"{name}-tmp"
    return f"""    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
"""


def nginx_backend_conf(workdir: Path, name: str, address: str, port: int, body: str) -> Path:
    """A tiny nginx that answers 200 with ``body`` to every request."""
    require_loopback(address)
    conf = f"""{_nginx_common(workdir, name)}
http {{
{_nginx_http_common(workdir, name)}
    server {{
        listen {address}:{port} reuseport backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""
    path = workdir / f"{name}.conf"
    path.write_text(conf)
    return path


def nginx_front_conf(workdir: Path, port: int, backends: Backends) -> Path:
    """nginx as the front: 4:1 weighted upstream (= 80/20), keep-alive pool."""
    conf = f"""{_nginx_common(workdir, "nginx-front")}
http {{
{_nginx_http_common(workdir, "nginx-front")}
    upstream demo {{
        server {BACKEND_A}:{backends.port} weight=4;
        server {BACKEND_B}:{backends.port} weight=1;
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} default_server backlog=4096;
        location / {{ return 404; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {HOST};
        location = {PATH} {{
            proxy_pass http://demo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location {PATH}/ {{
            proxy_pass http://demo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location / {{ return 404; }}
    }}
}}
"""
    path = workdir / "nginx-front.conf"
    path.write_text(conf)
    return path


def _envoy_cluster(name: str, address: str, port: int) -> dict[str, object]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": require_loopback(address),
                                        "port_value": port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
            ]
        },
    }


def envoy_conf(workdir: Path, port: int, backends: Backends) -> Path:
    """Envoy as the front: weighted_clusters 80/20. Written as JSON (valid YAML)."""
    route = {
        "match": {"path_separated_prefix": PATH},
        "route": {
            "weighted_clusters": {
                "clusters": [
                    {"name": "backend_a", "weight": WEIGHT_A},
                    {"name": "backend_b", "weight": WEIGHT_B},
                ]
            }
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "HTTP1",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {"name": "demo", "domains": [HOST, f"{HOST}:*"], "routes": [route]},
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    conf = {
        "static_resources": {
            "listeners": [
                {
                    "name": "front",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _envoy_cluster("backend_a", BACKEND_A, backends.port),
                _envoy_cluster("backend_b", BACKEND_B, backends.port),
            ],
        }
    }
    path = workdir / "envoy.json"
    path.write_text(json.dumps(conf, indent=1))
    return path


# --------------------------------------------------------------------------- albingress


def _service_docs(name: str, address: str, port: int) -> list[dict[str, object]]:
    require_loopback(address)
    service: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": port}]},
    }
    slice_: dict[str, object] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }
    return [service, slice_]


def forward_annotation(weight_a: int = WEIGHT_A, weight_b: int = WEIGHT_B) -> str:
    return json.dumps(
        [
            {
                "type": "ForwardGroup",
                "ForwardConfig": {
                    "ServerGroups": [
                        {"ServiceName": "tea-svc", "ServicePort": 80, "Weight": weight_a},
                        {"ServiceName": "coffee-svc", "ServicePort": 80, "Weight": weight_b},
                    ]
                },
            }
        ]
    )


def ingress_doc(name: str, hosts_paths: list[tuple[str, list[str]]]) -> dict[str, object]:
    """An Ingress whose every (host, Prefix path) forwards through the ``forward`` action."""
    rules = [
        {
            "host": host,
            "http": {
                "paths": [
                    {
                        "path": p,
                        "pathType": "Prefix",
                        "backend": {
                            "service": {"name": "forward", "port": {"name": "use-annotation"}}
                        },
                    }
                    for p in paths
                ]
            },
        }
        for host, paths in hosts_paths
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {"alb.ingress.kubernetes.io/actions.forward": forward_annotation()},
        },
        "spec": {"ingressClassName": "alb", "rules": rules},
    }


def write_yaml_docs(path: Path, docs: list[dict[str, object]]) -> None:
    """Write documents as a YAML stream (JSON is YAML; no PyYAML dependency needed here)."""
    text = "".join("---\n" + json.dumps(d, indent=1) + "\n" for d in docs)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def albingress_manifests(directory: Path, backends: Backends, rules: int = 1) -> None:
    """Services, EndpointSlices and Ingresses: the demo rule plus ``rules - 1`` others.

    Extra rules are spread over hosts ``h<i>.bench.test`` (100 paths each) and over extra paths
    on the demo host, so that both the host lookup and the path matchers have work to do.
    """
    directory.mkdir(parents=True, exist_ok=True)
    write_yaml_docs(
        directory / "services.yaml",
        _service_docs("tea-svc", BACKEND_A, backends.port)
        + _service_docs("coffee-svc", BACKEND_B, backends.port),
    )
    write_yaml_docs(directory / "tea-ingress.yaml", [ingress_doc("tea-ingress", [(HOST, [PATH])])])
    extra = rules - 1
    if extra <= 0:
        return
    demo_paths = [f"/p{j}/x" for j in range(min(extra, 99))]
    extra -= len(demo_paths)
    docs = [ingress_doc("bench-demo-extra", [(HOST, demo_paths)])]
    i = 0
    while extra > 0:
        n = min(extra, 100)
        docs.append(ingress_doc(f"bench-{i}", [(f"h{i}.bench.test", [f"/p{j}" for j in range(n)])]))
        extra -= n
        i += 1
    write_yaml_docs(directory / "bench-extra.yaml", docs)


def start_backends(procs: Processes, wd: Path, nginx: str) -> Backends:
    """The two nginx backends every front forwards to, started and answering."""
    port = free_port_on_all([BACKEND_A, BACKEND_B])
    for name, addr, body in (
        ("backend-a", BACKEND_A, BODY_A),
        ("backend-b", BACKEND_B, BODY_B),
    ):
        conf = nginx_backend_conf(wd, name, addr, port, body)
        proc = procs.start(name, [nginx, "-p", str(wd), "-c", str(conf), "-e", "stderr"])
        wait_tcp(addr, port, proc=proc)
    return Backends(port)
