"""A local stand-in for the Hugging Face Hub: the few endpoints that `huggingface_hub`'s HfApi
and HfFileSystem call to list a dataset's files and read them with HTTP range requests.

Tests point HF_ENDPOINT at it, so the Hub code paths run for real, offline. It serves one dataset
repository from a local folder at one revision, and counts the bytes it sends per file.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

REVISION = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """`with HubServer(folder, "org/name") as hub:` ... hub.endpoint, hub.bytes_sent."""

    def __init__(self, folder: Path, repo_id: str) -> None:
        self.folder, self.repo_id = Path(folder), repo_id
        self.bytes_sent: Counter[str] = Counter()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, head=False)

            def do_HEAD(self) -> None:
                server._handle(self, head=True)

            def do_POST(self) -> None:
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ the repository

    def _files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def _entry(self, path: Path) -> dict:
        relative = path.relative_to(self.folder).as_posix()
        if path.is_dir():
            return {"type": "directory", "path": relative, "oid": "0" * 40}
        oid = hashlib.sha1(path.read_bytes()).hexdigest()
        return {"type": "file", "path": relative, "size": path.stat().st_size, "oid": oid}

    def _info(self) -> dict:
        return {"id": self.repo_id, "_id": "x", "sha": REVISION, "private": False,
                "disabled": False, "gated": False, "tags": [], "downloads": 0, "likes": 0,
                "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p.relative_to(self.folder).as_posix()}
                             for p in self._files()]}

    # ------------------------------------------------------------------ HTTP

    def _handle(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(request.path)
        path = unquote(url.path)
        self.requests.append(f"{request.command} {path}")
        api = f"/api/datasets/{self.repo_id}"
        if path in (api, f"{api}/revision/main", f"{api}/revision/{REVISION}"):
            return self._json(request, self._info())
        tree = re.fullmatch(rf"{re.escape(api)}/tree/[^/]+/?(.*)", path)
        if tree:
            return self._tree(request, tree.group(1), parse_qs(url.query))
        if re.fullmatch(rf"{re.escape(api)}/paths-info/[^/]+", path):
            length = int(request.headers.get("Content-Length", 0))
            form = parse_qs(request.rfile.read(length).decode())
            found = [self.folder / p for p in form.get("paths", [])]
            return self._json(request, [self._entry(p) for p in found if p.exists()])
        resolve = re.fullmatch(rf"/datasets/{re.escape(self.repo_id)}/resolve/[^/]+/(.+)", path)
        if resolve and (self.folder / resolve.group(1)).is_file():
            return self._file(request, self.folder / resolve.group(1), head)
        self._send(request, 404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"},
                   head)

    def _tree(self, request, folder: str, query: dict) -> None:
        base = self.folder / folder
        if not base.is_dir():
            return self._send(request, 404, b'{"error": "not found"}', {}, False)
        recursive = query.get("recursive", ["false"])[0] == "true"
        paths = sorted(base.rglob("*") if recursive else base.iterdir())
        self._json(request, [self._entry(p) for p in paths])

    def _file(self, request, path: Path, head: bool) -> None:
        data = path.read_bytes()
        headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": REVISION,
                   "Accept-Ranges": "bytes"}
        status, body = 200, data
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            stop = min(int(match.group(2)) + 1 if match.group(2) else len(data), len(data))
            status, body = 206, data[start:stop]
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        if not head:
            self.bytes_sent[path.relative_to(self.folder).as_posix()] += len(body)
        self._send(request, status, body, headers, head)

    def _json(self, request, obj) -> None:
        self._send(request, 200, json.dumps(obj).encode(),
                   {"Content-Type": "application/json", "X-Repo-Commit": REVISION}, False)

    @staticmethod
    def _send(request, status: int, body: bytes, headers: dict, head: bool) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if not head:
            request.wfile.write(body)
