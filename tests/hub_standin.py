"""A stand-in for the Hugging Face Hub: a real HTTP server on 127.0.0.1 that speaks the part of the
Hub API that `huggingface_hub` uses to push (`create_repo` + `upload_folder` on their LFS path) and
to download (`hf_hub_download`, `snapshot_download`, `model_info`, `auth_check`, and so transformers
through HF_ENDPOINT), so both can be tested end to end without the network.

    with HubStandin(tokens={"hf_write": "write"}) as hub:
        push_folder(folder, "standin-user/demo", token="hf_write", endpoint=hub.url)
        hub.files("standin-user/demo")  # path -> bytes, as committed

    with HubStandin(tokens={"hf_read": "read"}) as hub:
        hub.add_model("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit", folder)  # tests/hub_replicas.py
        hub.add_model("org/gated", folder, gated="manual"); hub.authorize("org/gated", "hf_read")
        snapshot_download("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit", endpoint=hub.url)

Routes (shapes read from huggingface_hub 1.33: hf_api.py, _commit_api.py, lfs.py, file_download.py):
  POST /api/repos/create                         -> {"url"}; 409 with {"url"} when it exists
  POST /api/validate-yaml                        -> {"errors": [], "warnings": []}
  GET  /api/models/{repo}[/revision/{rev}]       -> repo info: id, sha, private, gated, siblings (with
                                                    ?blobs=true: size, blobId, lfs {sha256, size})
  GET  /api/models/{repo}/tree/{rev}[/{path}]    -> the file listing (?recursive=true), one page
  GET  /api/models/{repo}/auth-check             -> 200, or the gated / not-found errors below
  HEAD|GET /{repo}/resolve/{rev}/{path}          -> regular file: 200, ETag (git blob sha1), X-Repo-Commit,
                                                    Content-Length, the bytes; LFS file: 302 to the CDN URL
                                                    with X-Linked-Etag (sha256), X-Linked-Size, X-Repo-Commit
  GET  /cdn/{sha256}?sig=...                     -> the LFS object (Range honoured), on host "localhost" so
                                                    the client treats it as off the Hub; refused (400) if it
                                                    carries an Authorization header, as S3 does
  POST /api/models/{repo}/preupload/{rev}        -> per file: uploadMode "lfs" or "regular", remote oid
  POST /{repo}.git/info/lfs/objects/batch        -> upload actions pointing back here (basic or multipart)
  PUT  /lfs/put/{oid}, /lfs/part/{oid}/{n}       -> the object bytes (no Authorization: a pre-signed URL)
  POST /lfs/complete/{oid}                       -> multipart completion with the parts' etags
  POST /{repo}.git/info/lfs/objects/verify       -> sha256 and size of the stored object checked
  POST /api/models/{repo}/commit/{rev}           -> NDJSON: header, "file" (base64), "lfsFile" (oid, size)

Revisions: "main" (the last commit) or any commit's full sha; another is 404 RevisionNotFound.
The write routes want `Authorization: Bearer <token>` with a token from `tokens` (role "write"); a
rejected credential is echoed back in the 401 body, as a careless proxy might do, so that tests can
prove the client keeps it out of what it shows. The read routes take anonymous requests for public
repos; an unknown token is 401 "Invalid credentials in Authorization header", as on the Hub.
Download errors carry X-Error-Code and X-Error-Message, as the Hub's do (a HEAD has no body):
  404 RepoNotFound (no such repo, or private and anonymous), 404 EntryNotFound (with X-Repo-Commit),
  401 GatedRepo (gated, anonymous), 403 GatedRepo (gated, token not authorized), 404 RevisionNotFound.
`download_rate` (bytes a second) slows CDN downloads, so that progress can be watched; `stop()`
closes the server and its open connections, as a lost network would.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

USER = "standin-user"
REPO = r"(?P<repo>[^/]+/[^/]+)"
# Like the Hub's default .gitattributes: these always go to LFS, whatever their size.
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".model", ".h5", ".onnx", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub sends any file of 10 MB or more to LFS
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(Exception):
    """An HTTP error answer: status, JSON body {"error": message}, X-Error-Message, optional X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


Body = dict | list | bytes


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
    commits: list[dict] = field(default_factory=list)
    """{"oid", "summary", "ops": [(key, path)], "files": path -> bytes, "lfs_paths"}: each commit's tree."""
    gated: str | bool = False
    """False, or "auto" / "manual" as the Hub's repo info says: files then need an authorized token."""
    authorized: set[str] = field(default_factory=set)
    """Tokens whose user accepted a gated repo's terms."""

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    def tree(self, revision: str) -> tuple[str, dict[str, bytes], set[str]]:
        """(commit oid, files, LFS paths) at `revision`: "main" or a full commit sha."""
        if revision == "main":
            return self.head, self.files, self.lfs_paths
        for commit in self.commits:
            if commit["oid"] == revision:
                return commit["oid"], commit["files"], commit["lfs_paths"]
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


@dataclass
class LfsObject:
    size: int
    data: bytes = b""
    parts: dict[int, bytes] = field(default_factory=dict)
    verified: bool = False


class HubStandin:
    """The server and what it was sent. Use as a context manager; `url` is the endpoint."""

    def __init__(self, tokens: dict[str, str] | None = None, multipart_chunk_size: int | None = None,
                 download_rate: int | None = None) -> None:
        self.tokens = tokens or {}
        self.multipart_chunk_size = multipart_chunk_size  # set: objects larger than this go multipart
        self.download_rate = download_rate  # set: CDN downloads are sent at about this many bytes a second
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, LfsObject] = {}
        self.requests: list[Request] = []
        self.create_payloads: list[dict] = []
        self._signature = secrets.token_hex(8)  # stands for S3's pre-signed query
        self._lock = threading.Lock()
        self._stopped = False
        self._connections: set[socket.socket] = set()  # open keep-alive connections, cut on exit
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
        self.stop()

    def stop(self) -> None:
        """Stop answering, as if the network went away (again: nothing happens)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        # A pooled client connection would otherwise still be answered: cut them, as a lost network does.
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    @property
    def cdn_url(self) -> str:
        """Where LFS downloads are redirected: the same server under another host name, so that the client
        treats it as a CDN off the Hub (it must drop the Authorization header there, as for S3)."""
        return self.url.replace("127.0.0.1", "localhost")

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos[repo_id].files)

    def add_model(self, repo_id: str, folder: str | Path, *, private: bool = False, gated: str | bool = False,
                  summary: str = "Upload folder") -> str:
        """Commit every file of `folder` to `repo_id` (created, public by default), as a push would have;
        return the commit sha. Files go to LFS by the Hub's rules (suffix, size, binary content)."""
        folder = Path(folder)
        with self._lock:
            state = self.repos.setdefault(repo_id, Repo(private=private))
            state.gated = gated
            staged, lfs_paths = dict(state.files), set(state.lfs_paths)
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                name, data = path.relative_to(folder).as_posix(), path.read_bytes()
                staged[name] = data
                if name.endswith(LFS_SUFFIXES + (".jpg", ".png")) or len(data) >= LFS_MIN_SIZE or b"\0" in data[:512]:
                    lfs_paths.add(name)
                    oid = hashlib.sha256(data).hexdigest()
                    self.objects[oid] = LfsObject(size=len(data), data=data, verified=True)
                else:
                    lfs_paths.discard(name)
            oid = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in staged.items())).encode()
                               + state.head.encode()).hexdigest()
            state.files, state.lfs_paths = staged, lfs_paths
            state.commits.append({"oid": oid, "summary": summary, "ops": [("file", p) for p in sorted(staged)],
                                  "files": staged, "lfs_paths": lfs_paths})
            return oid

    def authorize(self, repo_id: str, token: str) -> None:
        """The token's user accepted the gated repo's terms on the website."""
        with self._lock:
            self.repos[repo_id].authorized.add(token)

    def downloads(self, kind: str = "cdn") -> list[Request]:
        """GET requests that carried file bytes: "cdn" (LFS objects) or "resolve" (regular files)."""
        prefix = "/cdn/" if kind == "cdn" else "/"
        return [r for r in self.requests if r.method == "GET" and r.path.startswith(prefix)
                and (kind == "cdn" or "/resolve/" in r.path)]

    def lfs_puts(self) -> list[Request]:
        """The requests that carried object bytes (single PUTs and multipart parts)."""
        return [r for r in self.requests if r.method == "PUT"]

    # -- dispatch ------------------------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, Body, dict[str, str]]:
        """(status, body: JSON value or file bytes, extra headers) for one request; records it first.
        A HEAD is answered as the GET of the same path, and the server then sends no body."""
        with self._lock:
            self.requests.append(request)
            path = unquote(urlsplit(request.path).path)
            method = "GET" if request.method == "HEAD" else request.method
            try:
                for route_method, pattern, handler, needs in self._routes():
                    match = re.fullmatch(pattern, path)
                    if match and route_method == method:
                        if needs:
                            self._authorize(request, needs)
                        return handler(request, **match.groupdict())
                raise HubError(404, f"no route {request.method} {path}")
            except HubError as err:
                # The Hub names coded errors in headers too (the client reads them, on HEAD above all);
                # the upload routes' uncoded 401 may echo a credential, so that one stays in the body.
                headers = {"X-Error-Code": err.code, "X-Error-Message": err.message} if err.code else {}
                headers.update(err.headers)
                return err.status, {"error": err.message}, headers

    def _routes(self) -> list[tuple]:
        return [
            ("POST", r"/api/repos/create", self._create_repo, "write"),
            ("POST", r"/api/validate-yaml", self._validate_yaml, None),
            ("GET", rf"/api/models/{REPO}(?:/revision/(?P<revision>[^/]+))?", self._repo_info, None),
            ("GET", rf"/api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<folder>.+))?", self._tree, None),
            ("GET", rf"/api/models/{REPO}/auth-check", self._auth_check, None),
            ("GET", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", self._resolve, None),
            ("GET", r"/cdn/(?P<oid>[0-9a-f]{64})", self._cdn, None),
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
        # Like the Hub: a gated repo's info is public (it says "gated"); its files are not.
        state = self._readable(request, repo)
        oid, files, lfs_paths = state.tree(revision or "main")
        blobs = parse_qs(urlsplit(request.path).query).get("blobs") in (["True"], ["true"], ["1"])
        siblings = []
        for path in sorted(files):
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=len(files[path]), blobId=_git_oid(files[path]))
                if path in lfs_paths:
                    sibling["lfs"] = {"sha256": hashlib.sha256(files[path]).hexdigest(), "size": len(files[path]),
                                      "pointerSize": 134}
            siblings.append(sibling)
        info = {"_id": oid[:24], "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": oid,
                "private": state.private, "gated": state.gated, "disabled": False, "downloads": 0, "likes": 0,
                "library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["transformers"],
                "lastModified": "2025-01-20T00:00:00.000Z", "createdAt": "2025-01-20T00:00:00.000Z",
                "siblings": siblings}
        return 200, info, {}

    def _tree(self, request: Request, repo: str, revision: str, folder: str | None = None) -> tuple[int, list, dict]:
        """The tree listing `list_repo_tree` reads (one page: no Link header)."""
        state = self._readable(request, repo)
        _, files, lfs_paths = state.tree(revision)
        recursive = parse_qs(urlsplit(request.path).query).get("recursive") in (["True"], ["true"], ["1"])
        prefix = f"{folder.strip('/')}/" if folder else ""
        entries, folders = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folders.add(prefix + "/".join(parts[:depth]))
            if "/" in rest and not recursive:
                continue
            data = files[path]
            entry: dict = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": path}
            if path in lfs_paths:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        listed = [f for f in sorted(folders) if recursive or "/" not in f[len(prefix):]]
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in listed]
        return 200, entries, {}

    def _auth_check(self, request: Request, repo: str) -> tuple[int, dict, dict]:
        self._file_access(request, repo)
        return 200, {}, {}

    def _resolve(self, request: Request, repo: str, revision: str, filename: str) -> tuple[int, Body, dict]:
        """A file at a revision: regular files served here, LFS files by a redirect to the CDN, with the
        headers hf_hub_download reads (huggingface_hub 1.33 file_download.get_hf_file_metadata)."""
        state = self._file_access(request, repo)
        oid, files, lfs_paths = state.tree(revision)
        if filename not in files:
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": oid})
        data = files[filename]
        if filename in lfs_paths:
            sha256 = hashlib.sha256(data).hexdigest()
            location = f"{self.cdn_url}/cdn/{sha256}?sig={self._signature}"
            return 302, b"", {"Location": location, "X-Repo-Commit": oid, "ETag": f'"{_git_oid(data)}"',
                              "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}
        return 200, data, {"X-Repo-Commit": oid, "ETag": f'"{_git_oid(data)}"',
                           "Content-Type": "text/plain; charset=utf-8"}

    def _cdn(self, request: Request, oid: str) -> tuple[int, Body, dict]:
        """An LFS object by its pre-signed URL. Like S3, it refuses a request that also sends a credential."""
        self._check_signature(request)
        if "authorization" in request.headers:
            raise HubError(400, "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter...")
        stored = self.objects.get(oid)
        if stored is None or not stored.verified:
            raise HubError(404, "NoSuchKey")
        data, status, headers = stored.data, 200, {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
        if ranged:
            start, end = int(ranged[1]), int(ranged[2] or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        return status, data, headers

    def _token(self, request: Request) -> str | None:
        """The request's token, None when anonymous; a token that is not known is refused, as the Hub does."""
        header = request.headers.get("authorization", "")
        if not header:
            return None
        token = header.removeprefix("Bearer ")
        if not header.startswith("Bearer ") or token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header",
                           headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        return token

    def _readable(self, request: Request, repo: str) -> Repo:
        """The repo, if the request may see it: public, or private with a token (one user here)."""
        token = self._token(request)
        state = self._repo(repo)
        if state.private and token is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return state

    def _file_access(self, request: Request, repo: str) -> Repo:
        state = self._readable(request, repo)
        token = self._token(request)
        if state.gated and token not in state.authorized:
            if token is None:
                raise HubError(401, f"Access to model {repo} is restricted. You must have access to it and be "
                               "authenticated to access it. Please log in.", code="GatedRepo")
            raise HubError(403, f"Access to model {repo} is restricted and you are not in the authorized list. "
                           f"Visit {self.url}/{repo} to ask for access.", code="GatedRepo")
        return state

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
        state.commits.append({"oid": oid, "summary": lines[0]["value"]["summary"], "ops": ops, "files": staged,
                              "lfs_paths": lfs_paths})
        url = f"{self.url}/{repo}/commit/{oid}"
        return 200, {"success": True, "commitUrl": url, "commitOid": oid, "pullRequestUrl": None}, {}


def _git_oid(data: bytes) -> str:
    """The git blob sha1 of a file: the Hub's ETag and blob id for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _remote_oid(state: Repo, path: str) -> str | None:
    """What the Hub reports for a file already in the repo: sha256 for LFS files, git blob sha1 else."""
    if path not in state.files:
        return None
    data = state.files[path]
    if path in state.lfs_paths:
        return hashlib.sha256(data).hexdigest()
    return _git_oid(data)


def _handler_class(hub: HubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pooled client expects
        timeout = 30  # an idle pooled connection must not hold a thread for ever

        def setup(self) -> None:
            super().setup()
            hub._connections.add(self.connection)

        def finish(self) -> None:
            hub._connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def _serve(self) -> None:
            request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                              self._read_body())
            status, body, headers = hub.answer(request)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
            self.send_response(status)
            self.send_header("Content-Type", headers.pop("Content-Type", kind))
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            rate = hub.download_rate if isinstance(body, bytes) and request.path.startswith("/cdn/") else None
            if rate is None:
                self.wfile.write(data)
                return
            step = max(1, rate // 20)  # a slow link: 20 slices a second
            for start in range(0, len(data), step):
                self.wfile.write(data[start:start + step])
                time.sleep(0.05)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()  # the blank line after the last, empty chunk
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_HEAD = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass  # the requests are recorded in `hub.requests`; keep test output quiet

    return Handler


def use_in_this_process(hub: HubStandin, monkeypatch, cache: Path) -> None:
    """Point this process's huggingface_hub at `hub`, with an empty cache at `cache` and no token or
    offline flag from the environment. huggingface_hub read HF_ENDPOINT at import, so its constants
    are patched too (HfApi() and hf_hub_url read them per call)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
