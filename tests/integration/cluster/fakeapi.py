"""A fake Kubernetes API server for the promotion tests: no API server can run on this machine, so this small
http.server answers like one for the two objects promotion touches — the catalogue ConfigMap and the tiers'
RayService — and records every request (method, path, query, content type, body).

What it imitates of the real server: GET returns the object or a 404 Status; PATCH accepts only server-side apply
(`application/apply-patch+yaml`) with a `fieldManager`, merges the applied fields as apply does for these fields
(ConfigMap `data` keys one by one, keys applied by others kept; the RayService's `spec.serveConfigV2` as a whole),
bumps `resourceVersion`, and with `dryRun=All` answers with the merged object but stores nothing. Names listed in
`forbidden` answer 403, as a Role without that resourceName would. It does not check field ownership conflicts
(promotion always forces) nor validate against the schemas.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

PATHS = {
    "configmaps": re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps/(?P<name>[^/]+)$"),
    "rayservices": re.compile(r"^/apis/ray\.io/v1/namespaces/(?P<ns>[^/]+)/rayservices/(?P<name>[^/]+)$"),
}


@dataclass
class FakeAPI:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    forbidden: set[str] = field(default_factory=set)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, path, namespace: str = "escalon"):  # noqa: ANN001, ANN201
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "promote", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "promote", "namespace": namespace}}],
        }))
        return path

    def __enter__(self) -> FakeAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                return

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._answer(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                    "message": message, "code": code})

            def _target(self) -> tuple[tuple[str, str, str] | None, dict[str, list[str]]]:
                url = urlparse(self.path)
                for plural, pattern in PATHS.items():
                    if m := pattern.match(url.path):
                        return (plural, m["ns"], m["name"]), parse_qs(url.query)
                return None, parse_qs(url.query)

            def _record(self, body: Any = None) -> None:  # noqa: ANN401
                url = urlparse(self.path)
                api.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                     "content_type": self.headers.get("Content-Type", ""), "body": body,
                                     "authorization": self.headers.get("Authorization", "")})

            def do_GET(self) -> None:  # noqa: N802
                self._record()
                key, _ = self._target()
                if key and key[2] in api.forbidden:
                    return self._status(403, "Forbidden", f"{key[0]} {key[2]!r} is forbidden")
                if key is None or key not in api.objects:
                    return self._status(404, "NotFound", f"{self.path} not found")
                return self._answer(200, api.objects[key])

            def do_PATCH(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = yaml.safe_load(self.rfile.read(length) or b"{}")
                self._record(body)
                key, query = self._target()
                if self.headers.get("Content-Type", "").split(";")[0] != "application/apply-patch+yaml":
                    return self._status(415, "UnsupportedMediaType", "only server-side apply is served here")
                if not query.get("fieldManager"):
                    return self._status(400, "BadRequest", "fieldManager is required for apply patch")
                if key and key[2] in api.forbidden:
                    return self._status(403, "Forbidden", f"{key[0]} {key[2]!r} is forbidden")
                if key is None or key not in api.objects:
                    return self._status(404, "NotFound", f"{self.path} not found")
                merged = copy.deepcopy(api.objects[key])
                if key[0] == "configmaps":
                    merged.setdefault("data", {}).update(body.get("data") or {})
                else:
                    merged.setdefault("spec", {}).update(body.get("spec") or {})
                meta = merged.setdefault("metadata", {})
                meta["resourceVersion"] = str(int(meta.get("resourceVersion", "1")) + 1)
                if query.get("dryRun") != ["All"]:
                    api.objects[key] = merged
                return self._answer(200, merged)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
