"""A small in-memory Hugging Face Hub, served over real HTTP, for round-trip tests.

It implements the part of the Hub HTTP API that the unpatched `huggingface_hub` 2.4 client uses to push and load
model repositories when Xet storage is disabled (`HF_HUB_DISABLE_XET=1`, which forces the legacy LFS upload path):

    POST /api/repos/create                                   create_repo (409 when it exists)
    POST /api/validate-yaml                                  README metadata check done before every commit
    GET  /api/models/{repo}[/revision/{rev}]                 model_info / revision resolution (sha, siblings)
    POST /api/models/{repo}/branch/{branch}                  create_branch (from `startingPoint` or main)
    POST /api/models/{repo}/preupload/{rev}                  upload mode per file: "lfs" for binary samples
    POST /{repo}.git/info/lfs/objects/batch                  LFS batch API, "basic" transfer
    PUT  /lfs/{oid}                                          LFS object upload (sha256 checked)
    POST /api/models/{repo}/commit/{rev}                     ndjson commit: file, lfsFile, deletedFile
    HEAD|GET /{repo}/resolve/{rev}/{path}                    download, with X-Repo-Commit and ETag

Errors carry the `X-Error-Code` header (RepoNotFound, RevisionNotFound, EntryNotFound) that the client maps to its
exceptions. Every request line is recorded in `HubServer.requests`. Authentication is not checked. Model repos only.
"""

import base64
import contextlib
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"


@dataclass
class Repo:
    """A repository: each commit is a full snapshot {path: bytes}; branches point at commit shas."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def commit(self, parent: str | None, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(f"{parent}{len(self.commits)}".encode() + b"".join(files.values())).hexdigest()
        self.commits[sha] = files
        return sha

    def resolve(self, revision: str) -> str | None:
        """Commit sha of a branch name or of a full commit sha; None when neither."""
        return self.branches.get(revision) or (revision if revision in self.commits else None)


class HubError(Exception):
    def __init__(self, status: int, code: str, headers: dict[str, str] | None = None):
        super().__init__(code)
        self.status, self.code, self.headers = status, code, headers or {}


class HubServer(ThreadingHTTPServer):
    """`with serving(HubServer(("127.0.0.1", 0))) as hub:`; `hub.url` is the value for HF_ENDPOINT."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]):
        super().__init__(address, _Handler)
        self.url = f"http://{self.server_address[0]}:{self.server_address[1]}"
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 hex -> content
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, "RepoNotFound")
        return self.repos[repo_id]

    def snapshot(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]]:
        sha = self.repo(repo_id).resolve(unquote(revision))
        if sha is None:
            raise HubError(404, "RevisionNotFound")
        return sha, self.repos[repo_id].commits[sha]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, *args) -> None:  # keep test output quiet; requests are recorded instead
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self, head: bool = False) -> None:
        path = urlsplit(self.path).path
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(f"{self.command} {path}")
        for method, pattern, handler in ROUTES:
            match = re.fullmatch(pattern, path)
            if match and self.command in (method, "HEAD" if method == "GET" else None):
                try:
                    with self.server.lock:
                        status, headers, payload = handler(self.server, body, **match.groupdict())
                except HubError as error:
                    status, headers, payload = error.status, {"X-Error-Code": error.code, **error.headers}, b""
                break
        else:
            status, headers, payload = 404, {}, b"not implemented by tests/hub_server.py"
        if isinstance(payload, dict | list):
            payload, headers = json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(payload)


@contextlib.contextmanager
def serving(server: HubServer):
    """Run `server` in a daemon thread for the duration of the block, then shut it down and close its socket."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def create_repo(hub: HubServer, body: bytes) -> tuple:
    request = json.loads(body)
    repo_id = f"{request['organization'] or 'user'}/{request['name']}"
    if repo_id in hub.repos:
        return 409, {}, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
    repo = hub.repos[repo_id] = Repo()
    repo.branches["main"] = repo.commit(None, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs\n"})
    return 200, {}, {"url": f"{hub.url}/{repo_id}"}


def model_info(hub: HubServer, body: bytes, repo: str, rev: str | None) -> tuple:
    sha, files = hub.snapshot(repo, rev or "main")
    return 200, {}, {"id": repo, "sha": sha, "private": False, "siblings": [{"rfilename": p} for p in files]}


def create_branch(hub: HubServer, body: bytes, repo: str, branch: str) -> tuple:
    branches = hub.repo(repo).branches
    if unquote(branch) in branches:
        raise HubError(409, "BranchExists")
    start = (json.loads(body) if body else {}).get("startingPoint", "main")
    branches[unquote(branch)] = hub.snapshot(repo, start)[0]
    return 200, {}, {}


def preupload(hub: HubServer, body: bytes, repo: str, rev: str) -> tuple:
    hub.snapshot(repo, rev)
    files = json.loads(body)["files"]
    # Like git's binary detection: a NUL byte in the first 512 bytes means the file goes through LFS.
    modes = ["lfs" if b"\0" in base64.b64decode(f["sample"]) else "regular" for f in files]
    files = [{"path": f["path"], "uploadMode": mode, "shouldIgnore": False} for f, mode in zip(files, modes)]
    return 200, {}, {"files": files}


def lfs_batch(hub: HubServer, body: bytes, repo: str) -> tuple:
    hub.repo(repo)
    objects = [
        {"oid": o["oid"], "size": o["size"]}
        | ({} if o["oid"] in hub.lfs_objects else {"actions": {"upload": {"href": f"{hub.url}/lfs/{o['oid']}"}}})
        for o in json.loads(body)["objects"]
    ]
    return 200, {}, {"transfer": "basic", "objects": objects}


def lfs_upload(hub: HubServer, body: bytes, oid: str) -> tuple:
    if hashlib.sha256(body).hexdigest() != oid:
        raise HubError(400, "BadRequest")
    hub.lfs_objects[oid] = body
    return 200, {}, b""


def commit(hub: HubServer, body: bytes, repo: str, rev: str) -> tuple:
    parent, files = hub.snapshot(repo, rev)
    files = dict(files)
    for line in body.splitlines():
        item = json.loads(line)
        value = item["value"]
        if item["key"] == "file":
            files[value["path"]] = base64.b64decode(value["content"])
        elif item["key"] == "lfsFile":
            files[value["path"]] = hub.lfs_objects[value["oid"]]
        elif item["key"] == "deletedFile":
            files.pop(value["path"])
    sha = hub.repos[repo].branches[unquote(rev)] = hub.repos[repo].commit(parent, files)
    return 200, {}, {"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha}


def resolve(hub: HubServer, body: bytes, repo: str, rev: str, path: str) -> tuple:
    sha, files = hub.snapshot(repo, rev)
    if unquote(path) not in files:
        raise HubError(404, "EntryNotFound", {"X-Repo-Commit": sha})
    content = files[unquote(path)]
    return 200, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'}, content


ROUTES = [
    ("POST", r"/api/repos/create", create_repo),
    ("POST", r"/api/validate-yaml", lambda hub, body: (200, {}, {})),
    ("GET", rf"/api/models/{REPO}(?:/revision/{REV})?", model_info),
    ("POST", rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", create_branch),
    ("POST", rf"/api/models/{REPO}/preupload/{REV}", preupload),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", lfs_batch),
    ("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", lfs_upload),
    ("POST", rf"/api/models/{REPO}/commit/{REV}", commit),
    ("GET", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", resolve),
]
