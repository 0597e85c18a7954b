"""``albingress webhook``: AdmissionReview in, admit or deny out, with ``validate``'s messages."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from albingress.cli import main as cli_main
from albingress.webhook import review
from tests.e2e.harness import ROOT, free_port, wait_until
from tests.kubernetes.harness import ingress, ingress_class


def broken_ingress() -> dict[str, Any]:
    obj = ingress("broken", "broken.example.com", "act")
    obj["metadata"]["annotations"]["alb.ingress.kubernetes.io/actions.act"] = (
        '[{"Type": "Teleport"}, {"Type": "FixedResponse", "FixedResponseConfig": '
        '{"HttpCode": "999"}}]'
    )
    path = obj["spec"]["rules"][0]["http"]["paths"][0]
    path["backend"]["service"]["port"] = {"name": "use-annotation"}
    return obj


def admission(obj: dict[str, Any], operation: str = "CREATE", kind: str = "Ingress") -> Any:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "networking.k8s.io", "version": "v1", "kind": kind},
            "operation": operation,
            "namespace": "default",
            "object": obj,
        },
    }


def test_denies_an_ingress_with_errors_with_validate_s_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = broken_ingress()
    answer = review(admission(obj))
    response = answer["response"]
    assert answer["kind"] == "AdmissionReview"
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    denied = response["status"]["message"].splitlines()
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump_all([ingress_class(), obj]))
    assert cli_main(["validate", str(manifest)]) == 1
    printed = capsys.readouterr().out.splitlines()
    errors = [
        line.removeprefix(f"{manifest}: ")
        for line in printed
        if line.startswith(f"{manifest}: Ingress default/broken") and ": warning: " not in line
    ]
    assert len(errors) == 2 and denied == errors


def test_admits_a_valid_ingress_and_warns_about_missing_services() -> None:
    response = review(admission(ingress("ok", "ok.example.com", "not-created-yet")))["response"]
    assert response["allowed"] is True
    assert "status" not in response
    assert any("Backend.ServiceNotFound" in w for w in response["warnings"])


@pytest.mark.parametrize(
    ("obj", "operation", "kind"),
    [
        pytest.param(
            {**broken_ingress(), "spec": {**broken_ingress()["spec"], "ingressClassName": "nginx"}},
            "CREATE",
            "Ingress",
            id="another class",
        ),
        pytest.param(broken_ingress(), "DELETE", "Ingress", id="delete"),
        pytest.param(broken_ingress(), "CREATE", "Service", id="another kind"),
    ],
)
def test_admits_what_is_not_ours(obj: dict[str, Any], operation: str, kind: str) -> None:
    assert review(admission(obj, operation, kind))["response"]["allowed"] is True


def test_rejects_a_body_that_is_not_a_review() -> None:
    with pytest.raises(ValueError):
        review({"kind": "AdmissionReview"})


def test_webhook_process_answers_over_http() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "albingress", "webhook", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def post(doc: Any) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("POST", "/validate", json.dumps(doc), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    try:
        wait_until(lambda: post(admission(ingress("a", "a.example.com", "s")))[0] == 200, 15, "up")
        status, answer = post(admission(broken_ingress()))
        assert status == 200 and answer["response"]["allowed"] is False
        status, answer = post({"request": "nonsense"})
        assert status == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
