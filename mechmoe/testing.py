"""Test and documentation fixtures: tiny models, hub-like folders, small files.

The tiny random-weight models and SmolLM2 live in the zoo (:mod:`mechmoe.zoo.tiny`,
:mod:`mechmoe.zoo.smollm2`) and are re-exported here for tests, docs and examples;
production code never imports this module. Nothing here downloads anything.

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> model = tiny_model("olmoe")
>>> model.dims.n_layers, model.dims.n_experts[0], model.dims.top_k[0]
(2, 8, 2)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mechmoe.ops.conformance import DEFAULT_PROMPTS as DEFAULT_PROMPTS
from mechmoe.zoo.smollm2 import smollm2_gguf as smollm2_gguf
from mechmoe.zoo.tiny import CORPUS as CORPUS
from mechmoe.zoo.tiny import MOE_FAMILIES as MOE_FAMILIES
from mechmoe.zoo.tiny import TINY_FAMILIES as TINY_FAMILIES
from mechmoe.zoo.tiny import save_tiny as save_tiny
from mechmoe.zoo.tiny import tiny_hf_model as tiny_hf_model
from mechmoe.zoo.tiny import tiny_model as tiny_model
from mechmoe.zoo.tiny import tiny_tokenizer as tiny_tokenizer
from mechmoe.zoo.tokenizers import BOS as BOS
from mechmoe.zoo.tokenizers import EOS as EOS
from mechmoe.zoo.tokenizers import PAD as PAD


def make_hub_cache(cache_dir: str | Path, repo_id: str, revisions: dict[str, Path | str]) -> Path:
    """Lay out ``revisions`` (branch name → model folder) as an HF hub cache.

    With ``HF_HUB_CACHE=cache_dir`` and ``HF_HUB_OFFLINE=1``, ``from_pretrained(repo_id,
    revision=branch)`` then resolves each branch exactly as it would for a downloaded
    repo, so revision handling is tested without a network.
    """
    cache_dir = Path(cache_dir)
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for branch, folder in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()
        snap = repo / "snapshots" / commit
        if snap.exists():
            shutil.rmtree(snap)
        shutil.copytree(folder, snap)
        (repo / "refs" / branch).write_text(commit)
    return repo


def _commit(repo_id: str, branch: str) -> str:
    return hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()


@dataclass
class FakeHub:
    """A local HTTP server answering as the Hugging Face hub does (see :func:`serve_hub`).

    ``endpoint`` is its address (give it as ``HF_ENDPOINT``); ``requests`` lists every
    request it answered as ``(method, path)``; set ``fail_api`` to an HTTP status to make
    its API answer that error (a hub having a bad day).
    """

    repos: dict[str, dict[str, Path]]
    endpoint: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_api: int | None = None

    def commit(self, repo_id: str, branch: str) -> str:
        """The commit hash the fake hub gives ``branch`` of ``repo_id``."""
        return _commit(repo_id, branch)

    def api_calls(self, suffix: str = "") -> list[str]:
        """Paths of the API requests made (``/api/...``) ending with ``suffix``."""
        return [p for _, p in self.requests if p.startswith("/api/") and p.endswith(suffix)]

    def _revision(self, repo_id: str, revision: str) -> tuple[str, Path] | None:
        for branch, folder in self.repos[repo_id].items():
            if revision in (branch, _commit(repo_id, branch)):
                return _commit(repo_id, branch), Path(folder)
        return None


class _HubHandler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _send(self, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, body: bool, **headers: str) -> None:
        extra = {"X-Error-Code": code} if code else {}
        message = json.dumps({"error": code or "error"}).encode()
        self._send(status, {"Content-Type": "application/json", **extra, **headers}, message, body)

    def _answer(self, *, body: bool) -> None:
        hub = self.hub
        path = urlsplit(self.path).path
        hub.requests.append((self.command, path))
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            if hub.fail_api is not None:
                return self._error(hub.fail_api, None, body)
            if len(parts) < 5 or parts[1] != "models":
                return self._error(404, None, body)
            repo_id, what = f"{parts[2]}/{parts[3]}", parts[4]
            if repo_id not in hub.repos:
                return self._error(401, "RepoNotFound", body)
            if what == "refs":
                branches = [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": _commit(repo_id, b)}
                    for b in hub.repos[repo_id]
                ]
                data = {"branches": branches, "converts": [], "tags": [], "pullRequests": []}
                return self._send(
                    200, {"Content-Type": "application/json"}, json.dumps(data).encode(), body
                )
            if what == "revision" and len(parts) >= 6:  # model_info at a revision
                found = hub._revision(repo_id, unquote("/".join(parts[5:])))
                if found is None:
                    return self._error(404, "RevisionNotFound", body)
                commit, folder = found
                files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
                data = {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit,
                    "private": False,
                    "siblings": [{"rfilename": f} for f in files if (folder / f).is_file()],
                }
                return self._send(
                    200, {"Content-Type": "application/json"}, json.dumps(data).encode(), body
                )
            if what == "tree" and len(parts) >= 6:  # list_repo_tree, one folder deep
                found = hub._revision(repo_id, unquote(parts[5]))
                if found is None:
                    return self._error(404, "RevisionNotFound", body)
                commit, folder = found
                sub = folder.joinpath(*(unquote(p) for p in parts[6:]))
                if ".." in parts[6:] or not sub.is_dir():
                    return self._error(404, "EntryNotFound", body, **{"X-Repo-Commit": commit})
                entries = [
                    {
                        "type": "file",
                        "path": p.relative_to(folder).as_posix(),
                        "size": p.stat().st_size,
                        "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                    }
                    if p.is_file()
                    else {
                        "type": "directory",
                        "path": p.relative_to(folder).as_posix(),
                        "size": 0,
                        "oid": commit,
                    }
                    for p in sorted(sub.iterdir())
                ]
                return self._send(
                    200, {"Content-Type": "application/json"}, json.dumps(entries).encode(), body
                )
            return self._error(404, None, body)
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, None, body)
        repo_id, revision = f"{parts[0]}/{parts[1]}", unquote(parts[3])
        filename = unquote("/".join(parts[4:]))
        if repo_id not in hub.repos:
            return self._error(401, "RepoNotFound", body)
        found = hub._revision(repo_id, revision)
        if found is None:
            return self._error(404, "RevisionNotFound", body)
        commit, folder = found
        file = folder / filename
        if ".." in Path(filename).parts or not file.is_file():
            return self._error(404, "EntryNotFound", body, **{"X-Repo-Commit": commit})
        data = file.read_bytes()
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Accept-Ranges": "bytes",
        }
        self._send(200, headers, data, body)


@contextlib.contextmanager
def serve_hub(repos: dict[str, dict[str, Path | str]]) -> Iterator[FakeHub]:
    """Serve ``repos`` (repo id → branch name → model folder) as the hub serves them.

    A local HTTP server on 127.0.0.1 answers the parts of the hub's API that listing
    branches and downloading use: ``/api/models/REPO/refs`` (``list_repo_refs``) and
    ``/REPO/resolve/REVISION/FILE`` (``HEAD`` and ``GET``, with the hub's ``X-Repo-Commit``
    and ``ETag`` headers, by branch name or commit hash), with the hub's error codes for
    an unknown repo, revision or file. Point ``HF_ENDPOINT`` at ``hub.endpoint`` in a
    process started afterwards (huggingface_hub reads it when imported). Nothing leaves
    this machine.
    """
    hub = FakeHub({r: {b: Path(f) for b, f in branches.items()} for r, branches in repos.items()})
    handler = type("Handler", (_HubHandler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(obj, indent=2))
    return path


__all__ = [
    "BOS",
    "CORPUS",
    "DEFAULT_PROMPTS",
    "EOS",
    "FakeHub",
    "MOE_FAMILIES",
    "PAD",
    "TINY_FAMILIES",
    "make_hub_cache",
    "save_tiny",
    "serve_hub",
    "smollm2_gguf",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
    "write_json",
]
