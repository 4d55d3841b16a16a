"""A local Hub-compatible HTTP server (127.0.0.1, in a thread) for the download and push tests.

It speaks the part of the Hub API huggingface_hub 2.x uses for model info, file downloads
(with Range), repo creation, preupload, the LFS batch API and commits, keeps repos in memory,
logs every request, and can misbehave on purpose: drop connections, send slowly, or serve a
corrupted byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants
import pytest

import weightkit.hub.download
from weightkit.options import HubOptions

TOKEN = "hf_test_secret_token_0123456789"
LFS_THRESHOLD = 1024  # bytes; the real Hub uses 10 MB (plus binary detection)


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_CACHE, empty, for this test alone."""
    root = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def state(root: Path) -> dict[str, tuple]:
    """Everything under `root`: links with their targets, files with size, mtime and sha256."""
    found = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            found[rel] = ("link", os.readlink(p), st.st_mtime_ns)
        elif p.is_dir():
            found[rel] = ("dir", st.st_mtime_ns)
        else:
            found[rel] = ("file", st.st_size, st.st_mtime_ns, sha256(p.read_bytes()))
    return found


def kill_once_grown(
    cmd: list[str], env: dict[str, str], part: Path, at_least: int = 32 * 1024
) -> int:
    """Run `cmd`, SIGKILL it once `part` holds `at_least` bytes; returns the bytes kept."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (part.is_file() and part.stat().st_size >= at_least):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return part.stat().st_size


@dataclass(frozen=True)
class Stored:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """What the Hub calls the file's oid: sha256 for LFS files, git blob sha1 otherwise."""
        return sha256(self.data) if self.lfs else git_sha1(self.data)

    def sibling(self, path: str) -> dict:
        if not self.lfs:
            return {"rfilename": path, "size": len(self.data), "blobId": self.oid}
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.oid}\n"
            f"size {len(self.data)}\n"
        ).encode()
        return {
            "rfilename": path,
            "size": len(self.data),
            "blobId": git_sha1(pointer),
            "lfs": {"sha256": self.oid, "size": len(self.data), "pointerSize": len(pointer)},
        }

    def tree_entry(self, path: str) -> dict:
        """The file as the Hub's /tree listing gives it (sibling names, oid for blobId)."""
        s = self.sibling(path)
        entry = {"type": "file", "path": path, "size": s["size"], "oid": s["blobId"]}
        if "lfs" in s:
            entry["lfs"] = {
                "oid": s["lfs"]["sha256"],
                "size": s["lfs"]["size"],
                "pointerSize": s["lfs"]["pointerSize"],
            }
        return entry


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    private: bool = False
    gated: bool = False


@dataclass(frozen=True)
class Logged:
    method: str
    path: str  # with the query string
    headers: Message  # case-insensitive .get()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.commits: dict[str, dict[str, Stored]] = {}  # commit sha -> files
        self.lfs_objects: dict[str, bytes] = {}
        self.log: list[Logged] = []
        self.unrouted: list[str] = []  # requests the fake does not know: a gap in the fake
        self.lock = threading.Lock()
        # misbehaviour, by file path
        self.drops: dict[str, list[int]] = {}  # successive GETs close the connection at offset
        self.statuses: dict[str, list[int]] = {}  # successive GETs answer with this status
        self.ignore_range: set[str] = set()  # answer Range requests with the whole file (200)
        self.corrupt: dict[str, int] = {}  # offset of a byte served flipped
        self.slow: tuple[int, float] | None = None  # (bytes per write, seconds between writes)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def options(self, token: str | None = None) -> HubOptions:
        """The HubOptions that talk to this server (no progress bars)."""
        return HubOptions(endpoint=self.url, token=token)

    def add_repo(
        self, repo: str, files: dict[str, bytes], *, private: bool = False, gated: bool = False
    ) -> str:
        """Create `repo` with one commit holding `files`; returns the commit sha."""
        self.repos[repo] = Repo(private=private, gated=gated)
        stored = {p: Stored(d, len(d) >= LFS_THRESHOLD) for p, d in files.items()}
        for s in stored.values():
            if s.lfs:
                self.lfs_objects[s.oid] = s.data
        return self._commit(repo, "main", stored, "initial")

    def files(self, repo: str, branch: str = "main") -> dict[str, bytes]:
        return {p: s.data for p, s in self.commits[self.repos[repo].branches[branch]].items()}

    def stored(self, repo: str, path: str, branch: str = "main") -> Stored:
        return self.commits[self.repos[repo].branches[branch]][path]

    def requests(self, method: str | None = None, contains: str = "") -> list[Logged]:
        with self.lock:
            return [
                r for r in self.log if (method is None or r.method == method) and contains in r.path
            ]

    def _commit(self, repo: str, branch: str, files: dict[str, Stored], message: str) -> str:
        parent = self.repos[repo].branches.get(branch, "")
        sha = hashlib.sha1(
            f"{repo}{branch}{parent}{message}{sorted(files)}{time.time_ns()}".encode()
        ).hexdigest()
        self.commits[sha] = files
        self.repos[repo].branches[branch] = sha
        return sha


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        pass

    Handler.hub = hub
    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    # --- plumbing ---

    def _start(self) -> list[str]:
        with self.hub.lock:
            self.hub.log.append(Logged(self.command, self.path, self.headers))
        return [unquote(s) for s in urlsplit(self.path).path.split("/")[1:]]

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self, obj: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _unrouted(self) -> None:
        self.hub.unrouted.append(f"{self.command} {self.path}")
        self._error(404, None, "no such route")

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
        self._json({"error": message}, status, headers)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {TOKEN}"

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            self._error(
                401 if not self._authorized() else 404, "RepoNotFound", "Repository not found"
            )
            return None
        return repo

    def _files_at(self, repo: Repo, rev: str) -> tuple[str, dict[str, Stored]] | None:
        sha = repo.branches.get(rev, rev)
        if sha not in self.hub.commits:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return sha, self.hub.commits[sha]

    # --- routes ---

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        seg = self._start()
        if seg[:2] == ["api", "models"] and len(seg) > 5 and seg[4] == "tree":
            return self._tree(f"{seg[2]}/{seg[3]}", seg[5])
        if seg[:2] == ["api", "models"]:
            rev = seg[5] if len(seg) > 5 and seg[4] == "revision" else "main"
            return self._model_info(f"{seg[2]}/{seg[3]}", rev)
        if len(seg) > 4 and seg[2] == "resolve":
            return self._resolve(f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        self._unrouted()

    def do_POST(self) -> None:
        seg = self._start()
        body = self._body()
        if seg == ["api", "validate-yaml"]:
            return self._json({})
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        if seg == ["api", "repos", "create"]:
            return self._create(json.loads(body))
        if seg[:2] == ["api", "models"] and len(seg) == 6:
            route = {
                "preupload": self._preupload,
                "commit": self._commit,
                "branch": self._branch,
            }.get(seg[4])
            if route:
                return route(f"{seg[2]}/{seg[3]}", seg[5], body)
        if seg[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(json.loads(body))
        if seg[:2] == ["lfs", "verify"]:
            ok = seg[2] in self.hub.lfs_objects
            return self._json({}) if ok else self._error(404, None, "object not uploaded")
        self._unrouted()

    def do_PUT(self) -> None:
        seg = self._start()
        body = self._body()
        if seg[:2] == ["lfs", "upload"] and sha256(body) == seg[2]:
            with self.hub.lock:
                self.hub.lfs_objects[seg[2]] = body
            return self._json({})
        self._error(400, None, "bad upload")

    def _model_info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        at = repo and self._files_at(repo, rev)
        if not at:
            return
        sha, files = at
        self._json(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": repo.private,
                "gated": "auto" if repo.gated else False,
                "siblings": [s.sibling(p) for p, s in sorted(files.items())],
            }
        )

    def _tree(self, repo_id: str, rev: str) -> None:
        """The recursive file listing snapshot_download asks for (files only, one page)."""
        repo = self._repo(repo_id)
        at = repo and self._files_at(repo, rev)
        if not at:
            return
        self._json([s.tree_entry(p) for p, s in sorted(at[1].items())])

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_id)
        at = repo and self._files_at(repo, rev)
        if not at:
            return
        if repo.gated and not self._authorized():
            return self._error(403, "GatedRepo", "Access to model is restricted")
        sha, files = at
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist")
        if self.command == "GET" and self.hub.statuses.get(path):
            return self._error(self.hub.statuses[path].pop(0), None, "try again later")
        data = files[path].data
        if path in self.hub.corrupt:
            i = self.hub.corrupt[path]
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        start, end = 0, len(data) - 1
        status = 200
        if (rng := self.headers.get("Range")) and path not in self.hub.ignore_range:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), int(last) if last else len(data) - 1
            if start >= len(data):
                return self._error(416, None, "Range Not Satisfiable")
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{files[path].oid}"')
        self.send_header("X-Repo-Commit", sha)
        if files[path].lfs:
            self.send_header("X-Linked-Size", str(len(data)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if self.command == "GET":
            self._send_body(path, data, start, end + 1)

    def _send_body(self, path: str, data: bytes, start: int, stop: int) -> None:
        drops = self.hub.drops.get(path)
        if drops:
            stop = min(stop, drops.pop(0))
            self.close_connection = True  # fewer bytes than Content-Length: the client sees a drop
        step, delay = self.hub.slow or (1 << 20, 0.0)
        try:
            for i in range(start, stop, step):
                self.wfile.write(data[i : min(i + step, stop)])
                self.wfile.flush()
                time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _create(self, req: dict) -> None:
        repo_id = f"{req['organization']}/{req['name']}"
        if repo_id in self.hub.repos:  # the Hub's 409 carries the url; create_repo reads it
            return self._json(
                {
                    "error": "You already created this model repo",
                    "url": f"{self.hub.url}/{repo_id}",
                },
                409,
            )
        with self.hub.lock:
            self.hub.repos[repo_id] = Repo(private=req.get("visibility") == "private")
            self.hub._commit(repo_id, "main", {}, "initial")
        self._json({"url": f"{self.hub.url}/{repo_id}"})

    def _branch(self, repo_id: str, branch: str, body: bytes) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if branch in repo.branches:
            return self._error(409, None, "Reference already exists")
        repo.branches[branch] = repo.branches["main"]
        self._json({})

    def _preupload(self, repo_id: str, rev: str, body: bytes) -> None:
        repo = self._repo(repo_id)
        at = repo and self._files_at(repo, rev)
        if not at:
            return
        files = at[1]
        self._json(
            {
                "files": [
                    {
                        "path": f["path"],
                        "uploadMode": "lfs" if f["size"] >= LFS_THRESHOLD else "regular",
                        "shouldIgnore": False,
                        "oid": files[f["path"]].oid if f["path"] in files else None,
                    }
                    for f in json.loads(body)["files"]
                ]
            }
        )

    def _lfs_batch(self, req: dict) -> None:
        objects = []
        for o in req["objects"]:
            entry = {"oid": o["oid"], "size": o["size"]}
            if o["oid"] not in self.hub.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs/upload/{o['oid']}"},
                    "verify": {"href": f"{self.hub.url}/lfs/verify/{o['oid']}"},
                }
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects})

    def _commit(self, repo_id: str, rev: str, body: bytes) -> None:
        repo = self._repo(repo_id)
        at = repo and self._files_at(repo, rev)
        if not at:
            return
        files = dict(at[1])
        lines = [json.loads(ln) for ln in body.splitlines() if ln.strip()]
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = Stored(base64.b64decode(value["content"]), False)
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.hub.lfs_objects:
                    return self._error(400, None, f"LFS object {value['oid']} not uploaded")
                files[value["path"]] = Stored(self.hub.lfs_objects[value["oid"]], True)
        with self.hub.lock:
            sha = self.hub._commit(repo_id, rev, files, lines[0]["value"]["summary"])
        self._json(
            {
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
            }
        )


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running FakeHub; no token, no stored login, no xet, fast retries."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(weightkit.hub.download, "RETRY_WAIT", 0.01)
    server = FakeHub().start()
    yield server
    server.stop()
    assert server.unrouted == []
