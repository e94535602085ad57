"""A loopback stand-in for the Hugging Face Hub, for tests only.

It speaks the subset of the Hub's HTTP API that ``huggingface_hub`` (checked against 2.4.0) uses for
``create_repo``, ``create_branch``, ``upload_folder`` (preupload, the LFS batch API with basic transfer,
commit, pull requests), ``hf_hub_download`` and ``snapshot_download``, so tests exercise the real client end
to end without the network. Repositories live in memory; every request is recorded with its headers so tests
can check what was sent (and what was not). Failures are injected with :meth:`FakeHub.fail`.

Endpoints (``{repo}`` is ``OWNER/NAME``, revisions are URL-quoted as the client sends them):

- ``POST /api/repos/create``
- ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}``
- ``GET /api/models/{repo}/tree/{rev}``
- ``POST /api/models/{repo}/branch/{branch}``
- ``POST /api/models/{repo}/preupload/{rev}``
- ``POST /api/models/{repo}/commit/{rev}`` (ndjson; ``?create_pr=1``)
- ``POST /api/models/{repo}/discussions`` and ``GET /api/models/{repo}/discussions/{num}`` (pull requests)
- ``POST /api/validate-yaml`` (refuses what :func:`card_errors` finds, with ``huggingface_hub``'s own card parsers)
- ``POST /{repo}.git/info/lfs/objects/batch``, ``PUT /lfs-upload/{oid}``,
  ``POST /{repo}.git/info/lfs/objects/verify``
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub uses as ETag and oid for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """The id the Hub reports: sha256 for LFS files, git sha1 for regular ones."""
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1(self.data)



def card_errors(content: str) -> list[str]:
    """Why the Hub would refuse a model card, using ``huggingface_hub``'s parsers; empty when it is valid."""
    from huggingface_hub import ModelCard

    try:
        ModelCard(content, ignore_metadata_errors=False)  # a YAML mapping; model-index parsed into EvalResults
    except ValueError as err:
        return [str(err).split(". ")[0]]
    return []

@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    pull_requests: list[dict] = field(default_factory=list)

    def files(self, revision: str) -> dict[str, StoredFile] | None:
        """Files at a branch, PR ref or commit oid; None when the revision does not exist."""
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)

    def head(self, revision: str) -> str | None:
        oid = self.refs.get(revision, revision)
        return oid if oid in self.commits else None


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Failure:
    status: int
    method: str | None
    path_contains: str | None
    times: int | None  # None: every matching request
    code: str | None  # X-Error-Code, e.g. "RepoNotFound"
    message: str

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


class HubError(Exception):
    """Raised inside a handler to answer with an error status, as the Hub does."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class FakeHub:
    """In-memory Hub on ``http://127.0.0.1:<free port>``; use as a context manager."""

    def __init__(self, token: str | None = None, lfs_patterns: tuple[str, ...] = ()):
        self.token = token  # when set, writes (and reads of private repos) need "Bearer <token>"
        self.lfs_patterns = lfs_patterns  # files matching these are "lfs" in preupload, others "regular"
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the FakeHub with `with FakeHub() as hub:`"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- test helpers ------------------------------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        times: int | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer ``status`` (Hub error ``code``, ``message``) to matching requests, ``times`` or always."""
        with self._lock:
            self.failures.append(Failure(status, method, path_contains, times, code, message or f"injected {status}"))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The content of a repository at a revision, as {path: bytes}."""
        stored = self.repos[repo_id].files(revision)
        assert stored is not None, f"no revision {revision} in {repo_id}"
        return {path: f.data for path, f in stored.items()}

    # -- request processing (called from handler threads) ------------------------------------------------

    def _take_failure(self, method: str, path: str) -> Failure | None:
        with self._lock:
            for failure in self.failures:
                if failure.matches(method, path):
                    if failure.times is not None:
                        failure.times -= 1
                        if failure.times == 0:
                            self.failures.remove(failure)
                    return failure
        return None

    def _new_oid(self) -> str:
        return hashlib.sha1(f"commit-{next(self._ids)}".encode()).hexdigest()

    def _is_authorized(self, headers: dict[str, str]) -> bool:
        return self.token is None or headers.get("authorization") == f"Bearer {self.token}"

    def _repo(self, repo_id: str, headers: dict[str, str], write: bool = False) -> Repo:
        if write and not self._is_authorized(headers):
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._is_authorized(headers)):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo


_API_REPO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS_BATCH = re.compile(r"^/([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)$")
_LFS_UPLOAD = re.compile(r"^/lfs-upload/([0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake_hub: FakeHub

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass

    # Every verb goes through one dispatcher so that recording and failure injection apply uniformly.
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        hub = self.fake_hub
        split = urlsplit(self.path)
        path, query = split.path, {k: v[-1] for k, v in parse_qs(split.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = self._read_body()
        with hub._lock:
            hub.requests.append(Recorded(self.command, self.path, headers, body))
        try:
            failure = hub._take_failure(self.command, path)
            if failure is not None:
                raise HubError(failure.status, failure.message, code=failure.code)
            with hub._lock:
                self._route(self.command, path, query, headers, body)
        except HubError as err:
            extra = {"X-Error-Message": err.message}
            if err.code:
                extra["X-Error-Code"] = err.code
            if err.commit:
                extra["X-Repo-Commit"] = err.commit
            self._send_json(err.status, {"error": err.message}, extra)

    def _route(self, method: str, path: str, query: dict, headers: dict, body: bytes) -> None:
        hub = self.fake_hub
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(headers, json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if m := _LFS_UPLOAD.match(path):
            return self._lfs_put(m.group(1), body)
        if m := _LFS_BATCH.match(path):
            repo = hub._repo(m.group(1), headers, write=True)
            return self._lfs_batch(repo, json.loads(body)) if m.group(2) == "batch" else self._lfs_verify(body)
        if m := _RESOLVE.match(path):
            return self._resolve(method, hub._repo(m.group(1), headers), unquote(m.group(2)), unquote(m.group(3)))
        if m := _API_REPO.match(path):
            return self._api(
                method,
                m.group(1),
                [unquote(p) for p in (m.group(2) or "").split("/") if p],
                query,
                headers,
                body,
            )
        raise HubError(404, f"no route for {method} {path}")

    def _api(self, method: str, repo_id: str, parts: list[str], query: dict, headers: dict, body: bytes) -> None:
        hub = self.fake_hub
        action = parts[0] if parts else None
        write = method == "POST"
        repo = hub._repo(repo_id, headers, write=write)
        if method == "GET" and action in (None, "revision"):
            return self._repo_info(repo, parts[1] if action else "main")
        if method == "GET" and action == "tree":
            return self._tree(repo, parts[1])
        if method == "POST" and action == "branch":
            return self._create_branch(repo, parts[1], json.loads(body or b"{}"))
        if method == "POST" and action == "preupload":
            return self._preupload(repo, parts[1], json.loads(body))
        if method == "POST" and action == "commit":
            return self._commit(repo, parts[1], body, create_pr=query.get("create_pr") == "1")
        if method == "POST" and action == "discussions":
            return self._open_pr(repo, json.loads(body))
        if method == "GET" and action == "discussions":
            return self._send_json(200, repo.pull_requests[int(parts[1]) - 1])
        raise HubError(404, f"no route for {method} /api/models/{repo_id}/{'/'.join(parts)}")

    # -- endpoints ---------------------------------------------------------------------------------------

    def _create_repo(self, headers: dict, payload: dict) -> None:
        hub = self.fake_hub
        if not hub._is_authorized(headers):
            raise HubError(401, "Invalid credentials in Authorization header")
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in hub.repos:  # the Hub's 409 carries the url, which create_repo(exist_ok=True) returns
            message = "You already created this model repo"
            return self._send_json(409, {"error": message, "url": f"{hub.url}/{repo_id}"}, {"X-Error-Message": message})
        repo = Repo(repo_id, private=payload.get("visibility") == "private")
        initial = hub._new_oid()
        repo.commits[initial] = {}
        repo.refs["main"] = initial
        hub.repos[repo_id] = repo
        self._send_json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": initial})

    def _validate_yaml(self, payload: dict) -> None:
        """What the Hub checks, with ``huggingface_hub``'s own parsers: the card's YAML block is a mapping
        (``ModelCard``) and its ``model-index`` parses into ``EvalResult`` records. An invalid card gets 400 and the
        reason, as the Hub answers."""
        errors = card_errors(payload["content"])
        if errors:
            raise HubError(400, "; ".join(errors))
        self._send_json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo: Repo, revision: str) -> None:
        files = repo.files(revision)
        if files is None:
            raise HubError(404, "Invalid rev id", code="RevisionNotFound")
        self._send_json(
            200,
            {
                "id": repo.repo_id,
                "sha": repo.head(revision),
                "private": repo.private,
                "siblings": [{"rfilename": path} for path in sorted(files)],
            },
        )

    def _tree(self, repo: Repo, revision: str) -> None:
        files = repo.files(revision)
        if files is None:
            raise HubError(404, "Invalid rev id", code="RevisionNotFound")
        entries = []
        for path, f in sorted(files.items()):
            entry = {"type": "file", "path": path, "size": len(f.data), "oid": git_blob_sha1(f.data)}
            if f.lfs:
                entry["lfs"] = {"oid": f.oid, "size": len(f.data), "pointerSize": 134}
            entries.append(entry)
        self._send_json(200, entries)

    def _create_branch(self, repo: Repo, branch: str, payload: dict) -> None:
        if branch in repo.refs:
            raise HubError(409, "Reference already exists")
        start = repo.head(payload.get("startingPoint", "main"))
        if start is None:
            raise HubError(404, "Invalid rev id", code="RevisionNotFound")
        repo.refs[branch] = start
        self._send_json(200, {})

    def _preupload(self, repo: Repo, revision: str, payload: dict) -> None:
        existing = repo.files(revision) or {}
        answer = []
        for item in payload["files"]:
            lfs = any(fnmatch.fnmatch(item["path"], pattern) for pattern in self.fake_hub.lfs_patterns)
            remote = existing.get(item["path"])
            answer.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": remote.oid if remote is not None else None,
                }
            )
        self._send_json(200, {"files": answer})

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> None:
        hub = self.fake_hub
        parent = repo.head(revision)
        if parent is None:
            raise HubError(404, "Invalid rev id", code="RevisionNotFound")
        files = dict(repo.commits[parent])
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = hub.lfs_objects.get(value["oid"])
                if data is None:
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = StoredFile(data, lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
        oid = hub._new_oid()
        repo.commits[oid] = files
        pr_url = None
        if create_pr:
            pr = self._new_pr(repo, header["summary"], header.get("description", ""))
            revision = f"refs/pr/{pr['num']}"
            pr_url = f"{hub.url}/{repo.repo_id}/discussions/{pr['num']}"
        repo.refs[revision] = oid
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{hub.url}/{repo.repo_id}/commit/{oid}",
                "commitMessage": header["summary"],
                "pullRequestUrl": pr_url,
            },
        )

    def _new_pr(self, repo: Repo, title: str, description: str) -> dict:
        num = len(repo.pull_requests) + 1
        repo.refs[f"refs/pr/{num}"] = repo.refs["main"]
        pr = {
            "num": num,
            "title": title,
            "description": description,
            "status": "draft",
            "isPullRequest": True,
            "createdAt": "2025-01-01T00:00:00.000Z",
            "author": {"name": "test-user"},
            "repo": {"name": repo.repo_id, "type": "model"},
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
            "events": [],
        }
        repo.pull_requests.append(pr)
        return pr

    def _open_pr(self, repo: Repo, payload: dict) -> None:
        if not payload.get("pullRequest"):
            raise HubError(400, "this fake Hub only opens pull requests")
        pr = self._new_pr(repo, payload["title"], payload.get("description", ""))
        self._send_json(200, {"num": pr["num"]})

    def _lfs_batch(self, repo: Repo, payload: dict) -> None:
        hub = self.fake_hub
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in hub.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{hub.url}/{repo.repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        self._send_json(
            200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        )

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its sha256")
        self.fake_hub.lfs_objects[oid] = body
        self._send_json(200, {})

    def _lfs_verify(self, body: bytes) -> None:
        payload = json.loads(body)
        data = self.fake_hub.lfs_objects.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            raise HubError(404, "LFS object not found")
        self._send_json(200, {})

    def _resolve(self, method: str, repo: Repo, revision: str, filename: str) -> None:
        files = repo.files(revision)
        if files is None:
            raise HubError(404, "Invalid rev id", code="RevisionNotFound")
        commit = repo.head(revision)
        f = files.get(filename)
        if f is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", commit=commit)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{f.oid}"', "Content-Type": "application/octet-stream"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.oid}"', "X-Linked-Size": str(len(f.data))})
        self._send(200, f.data, headers, head_only=method == "HEAD")

    # -- responses ---------------------------------------------------------------------------------------

    def _send_json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send(self, status: int, body: bytes, headers: dict, head_only: bool = False) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only and self.command != "HEAD":
            self.wfile.write(body)


class SilentServer:
    """A loopback "Hub" that accepts TCP connections and never answers: the kernel completes every handshake
    (listen backlog), nothing ever reads or writes. Models a host that resolves and connects but hangs."""

    def __init__(self) -> None:
        self._socket: socket.socket | None = None

    def __enter__(self) -> SilentServer:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        return self

    def __exit__(self, *exc) -> None:
        assert self._socket is not None
        self._socket.close()

    @property
    def url(self) -> str:
        assert self._socket is not None, "start it with `with SilentServer() as server:`"
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"
