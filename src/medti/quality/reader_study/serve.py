"""``serve_study(ServeConfig)``: the local web server readers answer a study on (standard library only).

Routes (nothing else is served, so the key and the answers of other readers are never files a URL reaches):

    GET  /                               the page (:mod:`.page`)
    GET  /study.json                     the question, the panel names, each pair's image names
    GET  /images/pair-017-left.png       the images study.json lists
    GET  /api/answers?reader=NAME        that reader's answers so far (none yet: an empty set)
    POST /api/answers?reader=NAME        one answer {"study_id", "pair", "choice": "left" | "right"}
    GET  /health                         "ok" (for scripts waiting for the server)

Every answer is written to ``answers/<reader>.json`` in the study folder before the reply, through a temp file
and a rename (a killed server leaves the previous file or the new one), under one lock (two tabs of one reader
cannot lose each other's clicks). Ctrl-C (or SIGTERM) stops it after any write in progress.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from medti.quality import QualityError
from medti.quality.reader_study.files import (
    ANSWERS,
    ANSWERS_FORMAT,
    SIDES,
    check_reader,
    new_answers,
    read_json,
    read_study,
)
from medti.quality.reader_study.page import page_html

MAX_BODY = 4096  # bytes: one answer is ~100


@dataclass(frozen=True)
class ServeConfig:
    study: Path  # the study folder (OUT/study of a made study), never its parent with the key
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port


@dataclass
class ServeResult:
    answers: Path  # the answers folder
    readers: dict[str, int] = field(default_factory=dict)  # reader -> pairs answered
    n_pairs: int = 0

    def summary(self) -> str:
        if not self.readers:
            return f"stopped; no answers yet ({self.answers} is empty)"
        who = ", ".join(f"{r} {k}/{self.n_pairs}" for r, k in sorted(self.readers.items()))
        return f"stopped; answers of {len(self.readers)} reader(s) are in {self.answers}: {who}"


class AnswerConflict(QualityError):
    """An answer for another study than the one served (a page left open while the study was re-made)."""


class StudyServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung browser connection must not keep Ctrl-C waiting; writes are guarded by the lock

    def __init__(self, cfg: ServeConfig):
        self.study_dir = Path(cfg.study)
        self.study = read_study(self.study_dir)
        self.study_id: str = self.study["study_id"]
        self.pairs = {p["id"] for p in self.study["pairs"]}
        self.images = {rel for p in self.study["pairs"] for s in SIDES for rel in p[s]}
        self.answers_dir = self.study_dir / ANSWERS
        self.lock = threading.Lock()
        try:
            super().__init__((cfg.host, cfg.port), _Handler)
        except OSError as e:
            raise QualityError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e}); give another port") from e

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    # ------------------------------------------------------------------------- answers
    def answers_of(self, reader: str) -> dict:
        check_reader(reader)
        path = self.answers_dir / f"{reader}.json"
        if not path.is_file():
            return new_answers(self.study, reader)
        data = read_json(path, "answers file")
        if data.get("study_id") != self.study_id or not isinstance(data.get("answers"), dict):
            raise AnswerConflict(f"answers file {path} is not this study's ({self.study_id}): field 'study_id' is "
                                 f"{data.get('study_id')!r}; move it away, or use another reader name")
        data.setdefault("clicks", [])
        return data

    def record(self, reader: str, body: object) -> dict:
        """Store one answer and return the reader's answers."""
        from medti.io import atomic_write_text

        if not isinstance(body, dict):
            raise QualityError("an answer is a JSON object {study_id, pair, choice}")
        if body.get("study_id") != self.study_id:
            raise AnswerConflict(f"this page belongs to study {body.get('study_id')!r}, but study {self.study_id} "
                                 "is served now; reload the page")
        pair, choice = body.get("pair"), body.get("choice")
        if pair not in self.pairs:
            raise QualityError(f"pair {pair!r} is not in this study")
        if choice not in SIDES:
            raise QualityError(f"choice {choice!r}: a choice is 'left' or 'right'")
        with self.lock:
            data = self.answers_of(reader)
            data["format"] = ANSWERS_FORMAT
            data["answers"][pair] = choice
            data["answers"] = dict(sorted(data["answers"].items()))
            data["clicks"].append({"pair": pair, "choice": choice,
                                   "at": datetime.now(UTC).isoformat(timespec="milliseconds")})
            atomic_write_text(self.answers_dir / f"{reader}.json", json.dumps(data, indent=1) + "\n")
        return data

    def readers(self) -> dict[str, int]:
        out = {}
        for p in sorted(self.answers_dir.glob("*.json")) if self.answers_dir.is_dir() else []:
            try:
                out[p.stem] = len(self.answers_of(p.stem)["answers"])
            except QualityError:
                continue  # another study's file: not counted
        return out


class _Handler(BaseHTTPRequestHandler):
    server: StudyServer
    server_version = "medti-reader-study"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # the terminal shows the URL and failures, not a line per image

    def _send(self, status: int, body: bytes, ctype: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _reader(self, query: str) -> str:
        names = parse_qs(query).get("reader", [])
        if len(names) != 1:
            raise QualityError("give the reader's name: ?reader=NAME")
        return check_reader(names[0])

    def _answers_reply(self, data: dict) -> None:
        self._json(200, {"study_id": data["study_id"], "reader": data["reader"], "answers": data["answers"]})

    def do_GET(self):  # noqa: N802 (the base class's name)
        url = urlsplit(self.path)
        route = url.path
        try:
            if route in ("/", "/index.html"):
                self._send(200, page_html(), "text/html; charset=utf-8")
            elif route == "/study.json":
                self._json(200, self.server.study)
            elif route == "/health":
                self._send(200, b"ok\n", "text/plain")
            elif route.lstrip("/") in self.server.images:  # only the files study.json names: no path walks
                body = (self.server.study_dir / route.lstrip("/")).read_bytes()
                self._send(200, body, "image/png", cache="private, max-age=86400")
            elif route == "/api/answers":
                self._answers_reply(self.server.answers_of(self._reader(url.query)))
            else:
                self._error(404, f"no {route} here")
        except AnswerConflict as e:
            self._error(409, str(e))
        except QualityError as e:
            self._error(400, str(e))

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        url = urlsplit(self.path)
        if url.path != "/api/answers":
            self._error(404, f"no {url.path} here")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise QualityError(f"an answer is 1-{MAX_BODY} bytes of JSON, got {length}")
            try:
                body = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise QualityError(f"an answer must be JSON ({e})") from None
            self._answers_reply(self.server.record(self._reader(url.query), body))
        except AnswerConflict as e:
            self._error(409, str(e))
        except QualityError as e:
            self._error(400, str(e))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_study(cfg: ServeConfig, announce: Callable[[str], None] = print) -> ServeResult:
    """Serve until Ctrl-C or SIGTERM; ``announce`` gets the lines a person starting it should see."""
    server = StudyServer(cfg)
    n = len(server.pairs)
    announce(f"reader study {server.study_id}: {n} pairs, question {server.study['question']!r}")
    announce(f"serving {server.study_dir} at {server.url}  (readers open {server.url}?reader=NAME)")
    announce(f"answers are saved to {server.answers_dir}; Ctrl-C stops")
    # SIGTERM (kill, a service manager) stops it the way Ctrl-C does; only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        with server.lock:  # an answer being written is finished before the process ends
            pass
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return ServeResult(answers=server.answers_dir, readers=server.readers(), n_pairs=n)
