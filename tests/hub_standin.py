"""A stand-in for the Hugging Face Hub: a real HTTP server on 127.0.0.1 that speaks the part of the
Hub API that `huggingface_hub`'s `create_repo` + `upload_folder` use on their LFS path, so a push
can be tested end to end without the network.

    with HubStandin(tokens={"hf_write": "write"}) as hub:
        push_folder(folder, "standin-user/demo", token="hf_write", endpoint=hub.url)
        hub.files("standin-user/demo")  # path -> bytes, as committed

Routes (shapes read from huggingface_hub 1.33: hf_api.py, _commit_api.py, lfs.py):
  POST /api/repos/create                         -> {"url"}; 409 with {"url"} when it exists
  POST /api/validate-yaml                        -> {"errors": [], "warnings": []}
  GET  /api/models/{repo}[/revision/{rev}]       -> repo info (id, sha, private, siblings)
  POST /api/models/{repo}/preupload/{rev}        -> per file: uploadMode "lfs" or "regular", remote oid
  POST /{repo}.git/info/lfs/objects/batch        -> upload actions pointing back here (basic or multipart)
  PUT  /lfs/put/{oid}, /lfs/part/{oid}/{n}       -> the object bytes (no Authorization: a pre-signed URL)
  POST /lfs/complete/{oid}                       -> multipart completion with the parts' etags
  POST /{repo}.git/info/lfs/objects/verify       -> sha256 and size of the stored object checked
  POST /api/models/{repo}/commit/{rev}           -> NDJSON: header, "file" (base64), "lfsFile" (oid, size)

Every /api and .git route wants `Authorization: Bearer <token>` with a token from `tokens` (role
"write" or "read"). A rejected credential is echoed back in the 401 body, as a careless proxy might
do, so that tests can prove the client keeps it out of what it shows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

USER = "standin-user"
REPO = r"(?P<repo>[^/]+/[^/]+)"
# Like the Hub's default .gitattributes: these always go to LFS, whatever their size.
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".model", ".h5", ".onnx", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub sends any file of 10 MB or more to LFS
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(Exception):
    """An HTTP error answer: status, JSON body {"error": message}, optional X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[dict] = field(default_factory=list)  # {"oid", "summary", "ops": [(key, path)]}

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


@dataclass
class LfsObject:
    size: int
    data: bytes = b""
    parts: dict[int, bytes] = field(default_factory=dict)
    verified: bool = False


class HubStandin:
    """The server and what it was sent. Use as a context manager; `url` is the endpoint."""

    def __init__(self, tokens: dict[str, str], multipart_chunk_size: int | None = None) -> None:
        self.tokens = tokens
        self.multipart_chunk_size = multipart_chunk_size  # set: objects larger than this go multipart
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, LfsObject] = {}
        self.requests: list[Request] = []
        self.create_payloads: list[dict] = []
        self._signature = secrets.token_hex(8)  # stands for S3's pre-signed query
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        # A short poll interval: shutdown() waits up to one interval, and each test stops a server.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-standin",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubStandin:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos[repo_id].files)

    def lfs_puts(self) -> list[Request]:
        """The requests that carried object bytes (single PUTs and multipart parts)."""
        return [r for r in self.requests if r.method == "PUT"]

    # -- dispatch ------------------------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, dict, dict[str, str]]:
        """(status, JSON body, extra headers) for one request; records it first."""
        with self._lock:
            self.requests.append(request)
            path = urlsplit(request.path).path
            try:
                for method, pattern, handler, needs in self._routes():
                    match = re.fullmatch(pattern, path)
                    if match and method == request.method:
                        if needs:
                            self._authorize(request, needs)
                        return handler(request, **match.groupdict())
                raise HubError(404, f"no route {request.method} {path}")
            except HubError as err:
                headers = {"X-Error-Code": err.code} if err.code else {}
                return err.status, {"error": err.message}, headers

    def _routes(self) -> list[tuple]:
        return [
            ("POST", r"/api/repos/create", self._create_repo, "write"),
            ("POST", r"/api/validate-yaml", self._validate_yaml, None),
            ("GET", rf"/api/models/{REPO}(?:/revision/(?P<revision>[^/]+))?", self._repo_info, "read"),
            ("POST", rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", self._preupload, "write"),
            ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", self._lfs_batch, "write"),
            ("PUT", r"/lfs/put/(?P<oid>[0-9a-f]{64})", self._lfs_put, None),
            ("PUT", r"/lfs/part/(?P<oid>[0-9a-f]{64})/(?P<number>\d+)", self._lfs_put_part, None),
            ("POST", r"/lfs/complete/(?P<oid>[0-9a-f]{64})", self._lfs_complete, None),
            ("POST", rf"/{REPO}\.git/info/lfs/objects/verify", self._lfs_verify, "write"),
            ("POST", rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", self._commit, "write"),
        ]

    def _authorize(self, request: Request, needs: str) -> None:
        header = request.headers.get("authorization", "")
        role = self.tokens.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None
        if role is None:
            raise HubError(401, f"Invalid credentials in Authorization header: {header!r}")
        if needs == "write" and role != "write":
            raise HubError(403, "You don't have the rights to write to this repository (read-only token)")

    def _repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return self.repos[repo_id]

    def _check_signature(self, request: Request) -> None:
        if parse_qs(urlsplit(request.path).query).get("sig") != [self._signature]:
            raise HubError(403, "bad or missing upload signature")

    # -- repos ---------------------------------------------------------------------------------

    def _create_repo(self, request: Request) -> tuple[int, dict, dict]:
        payload = json.loads(request.body)
        self.create_payloads.append(payload)
        namespace, name = payload.get("organization") or USER, payload["name"]
        if namespace != USER:
            raise HubError(403, f"You don't have the rights to create a model under the namespace {namespace!r}")
        if not REPO_NAME.fullmatch(name) or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        repo_id = f"{namespace}/{name}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}, {}

    def _validate_yaml(self, request: Request) -> tuple[int, dict, dict]:
        return 200, {"errors": [], "warnings": []}, {}

    def _repo_info(self, request: Request, repo: str, revision: str | None = None) -> tuple[int, dict, dict]:
        state = self._repo(repo)
        siblings = [{"rfilename": path} for path in sorted(state.files)]
        return 200, {"id": repo, "sha": state.head, "private": state.private, "siblings": siblings}, {}

    def _preupload(self, request: Request, repo: str, revision: str) -> tuple[int, dict, dict]:
        state = self._repo(repo)
        answers = []
        for item in json.loads(request.body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
            answers.append({
                "path": item["path"],
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
                "oid": _remote_oid(state, item["path"]),
            })
        return 200, {"files": answers}, {}

    # -- LFS -----------------------------------------------------------------------------------

    def _lfs_batch(self, request: Request, repo: str) -> tuple[int, dict, dict]:
        self._repo(repo)
        payload = json.loads(request.body)
        if payload.get("operation") != "upload" or payload.get("hash_algo") != "sha256":
            raise HubError(400, "only sha256 uploads are supported")
        multipart = self.multipart_chunk_size is not None and "multipart" in payload.get("transfers", [])
        answers = []
        for item in payload["objects"]:
            oid, size = item["oid"], item["size"]
            answer = {"oid": oid, "size": size, "authenticated": True}
            stored = self.objects.get(oid)
            if stored is None or not stored.verified:  # already there: no actions, the client skips it
                self.objects[oid] = LfsObject(size=size)
                answer["actions"] = self._upload_actions(repo, oid, size, multipart)
            answers.append(answer)
        return 200, {"transfer": "multipart" if multipart else "basic", "objects": answers}, {}

    def _upload_actions(self, repo: str, oid: str, size: int, multipart: bool) -> dict:
        sig = f"?sig={self._signature}"
        verify = {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify"}
        chunk = self.multipart_chunk_size
        if not multipart or chunk is None or size <= chunk:
            return {"upload": {"href": f"{self.url}/lfs/put/{oid}{sig}"}, "verify": verify}
        parts = {f"{n:05d}": f"{self.url}/lfs/part/{oid}/{n}{sig}" for n in range(1, -(-size // chunk) + 1)}
        header = {"chunk_size": str(chunk), **parts}
        return {"upload": {"href": f"{self.url}/lfs/complete/{oid}{sig}", "header": header}, "verify": verify}

    def _lfs_put(self, request: Request, oid: str) -> tuple[int, dict, dict]:
        self._check_signature(request)
        self._pending(oid).data = request.body
        return 200, {}, {}

    def _lfs_put_part(self, request: Request, oid: str, number: str) -> tuple[int, dict, dict]:
        self._check_signature(request)
        self._pending(oid).parts[int(number)] = request.body
        return 200, {}, {"ETag": f'"{hashlib.md5(request.body).hexdigest()}"'}

    def _lfs_complete(self, request: Request, oid: str) -> tuple[int, dict, dict]:
        self._check_signature(request)
        stored = self._pending(oid)
        parts = json.loads(request.body)["parts"]
        for part in parts:
            data = stored.parts.get(part["partNumber"])
            if data is None or part["etag"].strip('"') != hashlib.md5(data).hexdigest():
                raise HubError(400, f"part {part['partNumber']} missing or etag mismatch")
        stored.data = b"".join(stored.parts[part["partNumber"]] for part in parts)
        return 200, {}, {}

    def _lfs_verify(self, request: Request, repo: str) -> tuple[int, dict, dict]:
        payload = json.loads(request.body)
        stored = self._pending(payload["oid"])
        if hashlib.sha256(stored.data).hexdigest() != payload["oid"] or len(stored.data) != payload["size"]:
            raise HubError(400, "uploaded object does not match its oid or size")
        stored.verified = True
        return 200, {"success": True}, {}

    def _pending(self, oid: str) -> LfsObject:
        if oid not in self.objects:
            raise HubError(404, f"no upload was announced for {oid}")
        return self.objects[oid]

    # -- commit --------------------------------------------------------------------------------

    def _commit(self, request: Request, repo: str, revision: str) -> tuple[int, dict, dict]:
        state = self._repo(repo)
        if request.headers.get("content-type") != "application/x-ndjson":
            raise HubError(400, "a commit is NDJSON")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "the first NDJSON line must be the header")
        staged, lfs_paths, ops = dict(state.files), set(state.lfs_paths), []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                staged[value["path"]] = base64.b64decode(value["content"])
                lfs_paths.discard(value["path"])
            elif key == "lfsFile":
                stored = self.objects.get(value["oid"])
                if stored is None or not stored.verified or stored.size != value.get("size", stored.size):
                    raise HubError(422, f"LFS object {value['oid']} was not uploaded", code="LfsObjectNotFound")
                staged[value["path"]] = stored.data
                lfs_paths.add(value["path"])
            elif key == "deletedFile":
                staged.pop(value["path"], None)
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
            ops.append((key, value["path"]))
        oid = hashlib.sha1(request.body + state.head.encode()).hexdigest()
        state.files, state.lfs_paths = staged, lfs_paths
        state.commits.append({"oid": oid, "summary": lines[0]["value"]["summary"], "ops": ops})
        url = f"{self.url}/{repo}/commit/{oid}"
        return 200, {"success": True, "commitUrl": url, "commitOid": oid, "pullRequestUrl": None}, {}


def _remote_oid(state: Repo, path: str) -> str | None:
    """What the Hub reports for a file already in the repo: sha256 for LFS files, git blob sha1 else."""
    if path not in state.files:
        return None
    data = state.files[path]
    if path in state.lfs_paths:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler_class(hub: HubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pooled client expects
        timeout = 30  # an idle pooled connection must not hold a thread for ever

        def _serve(self) -> None:
            request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                              self._read_body())
            status, body, headers = hub.answer(request)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()  # the blank line after the last, empty chunk
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass  # the requests are recorded in `hub.requests`; keep test output quiet

    return Handler
