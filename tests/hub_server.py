"""A local stand-in for the Hugging Face Hub: the few endpoints that `huggingface_hub`'s HfApi
and HfFileSystem call to list a dataset's files and read them with HTTP range requests.

Tests point HF_ENDPOINT at it, so the Hub code paths run for real, offline. It serves one dataset
repository from a local folder at one revision (or several revisions, each a folder, `main`
naming the newest), and counts the requests and the bytes it sends per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

REVISION = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """`with HubServer(folder, "org/name") as hub:` ... hub.endpoint, hub.bytes_sent,
    hub.requests ("GET path" or "GET path bytes=a-b"). `revisions` maps commit shas to folders;
    `main` is the newest (tests may move it)."""

    def __init__(self, folder: Path, repo_id: str,
                 revisions: dict[str, Path] | None = None) -> None:
        self.revisions = {sha: Path(f) for sha, f in (revisions or {REVISION: folder}).items()}
        self.main = list(self.revisions)[-1]
        self.folder, self.repo_id = self.revisions[self.main], repo_id
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

    def _folder(self, revision: str) -> Path | None:
        return self.revisions.get(self.main if revision == "main" else revision)

    def _files(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file())

    def _entry(self, path: Path, folder: Path) -> dict:
        relative = path.relative_to(folder).as_posix()
        if path.is_dir():
            return {"type": "directory", "path": relative, "oid": "0" * 40}
        oid = hashlib.sha1(path.read_bytes()).hexdigest()
        return {"type": "file", "path": relative, "size": path.stat().st_size, "oid": oid}

    def _info(self, sha: str) -> dict:
        return {"id": self.repo_id, "_id": "x", "sha": sha, "private": False,
                "disabled": False, "gated": False, "tags": [], "downloads": 0, "likes": 0,
                "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p.relative_to(self.revisions[sha]).as_posix()}
                             for p in self._files(self.revisions[sha])]}

    # ------------------------------------------------------------------ HTTP

    def _handle(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(request.path)
        path = unquote(url.path)
        byte_range = request.headers.get("Range")
        self.requests.append(f"{request.command} {path}" + (f" {byte_range}" if byte_range
                                                            else ""))
        api = f"/api/datasets/{self.repo_id}"
        info = re.fullmatch(rf"{re.escape(api)}(?:/revision/([^/]+))?", path)
        if info:
            revision = info.group(1) or "main"
            if self._folder(revision) is None:
                return self._send(request, 404, b'{"error": "Revision Not Found"}',
                                  {"X-Error-Code": "RevisionNotFound"}, head)
            sha = self.main if revision == "main" else revision
            return self._json(request, self._info(sha), sha)
        tree = re.fullmatch(rf"{re.escape(api)}/tree/([^/]+)/?(.*)", path)
        if tree:
            return self._tree(request, tree.group(1), tree.group(2), parse_qs(url.query))
        paths_info = re.fullmatch(rf"{re.escape(api)}/paths-info/([^/]+)", path)
        if paths_info and self._folder(paths_info.group(1)):
            folder = self._folder(paths_info.group(1))
            length = int(request.headers.get("Content-Length", 0))
            form = parse_qs(request.rfile.read(length).decode())
            found = [folder / p for p in form.get("paths", [])]
            return self._json(request, [self._entry(p, folder) for p in found if p.exists()])
        resolve = re.fullmatch(rf"/datasets/{re.escape(self.repo_id)}/resolve/([^/]+)/(.+)", path)
        if resolve and self._folder(resolve.group(1)) and \
                (self._folder(resolve.group(1)) / resolve.group(2)).is_file():
            folder = self._folder(resolve.group(1))
            return self._file(request, folder / resolve.group(2), folder, head)
        self._send(request, 404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"},
                   head)

    def _tree(self, request, revision: str, folder: str, query: dict) -> None:
        root = self._folder(revision)
        base = root / folder if root else None
        if base is None or not base.is_dir():
            return self._send(request, 404, b'{"error": "not found"}', {}, False)
        recursive = query.get("recursive", ["false"])[0] == "true"
        paths = sorted(base.rglob("*") if recursive else base.iterdir())
        self._json(request, [self._entry(p, root) for p in paths])

    def _file(self, request, path: Path, folder: Path, head: bool) -> None:
        data = path.read_bytes()
        sha = next(s for s, f in self.revisions.items() if f == folder)
        headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": sha,
                   "Accept-Ranges": "bytes"}
        status, body = 200, data
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            stop = min(int(match.group(2)) + 1 if match.group(2) else len(data), len(data))
            status, body = 206, data[start:stop]
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        if not head:
            self.bytes_sent[path.relative_to(folder).as_posix()] += len(body)
        self._send(request, status, body, headers, head)

    def _json(self, request, obj, sha: str | None = None) -> None:
        self._send(request, 200, json.dumps(obj).encode(),
                   {"Content-Type": "application/json", "X-Repo-Commit": sha or self.main}, False)

    @staticmethod
    def _send(request, status: int, body: bytes, headers: dict, head: bool) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if not head:
            request.wfile.write(body)


@contextlib.contextmanager
def pointed_at(server: HubServer, cache: Path):
    """Every Hub client of this process (huggingface_hub, datasets, HfFileSystem) talks to
    `server`, with the project's cache in `cache`; everything restored afterwards."""
    import datasets.config
    from huggingface_hub import HfFileSystem, constants

    patched = [(constants, "ENDPOINT", server.endpoint),
               (datasets.config, "HF_ENDPOINT", server.endpoint),
               (constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patched]
    environ = {key: os.environ.get(key) for key in ("HF_ENDPOINT", "XDG_CACHE_HOME")}
    HfFileSystem.clear_instance_cache()  # fsspec keeps one per argument set, endpoint baked in
    try:
        for obj, name, value in patched:
            setattr(obj, name, value)
        os.environ.update(HF_ENDPOINT=server.endpoint, XDG_CACHE_HOME=str(cache))
        yield server
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        for key, value in environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        HfFileSystem.clear_instance_cache()
