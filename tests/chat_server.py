"""A real HTTP server speaking OpenAI's chat completions protocol, in a thread of the test process.

Each behaviour has its own API base, `server.url(behaviour)`, so one server plays every endpoint a
test needs: "good" answers {"synonyms": WORDS[class]} (the class is the one the request's prompt
quotes), "slow" does so after `delay` seconds, "not_json", "wrong_shape", "not_strings" and
"long_phrase" answer malformed messages, "denied" answers HTTP 401. Every request is recorded.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEHAVIOURS = ("good", "slow", "not_json", "wrong_shape", "not_strings", "long_phrase", "denied")
QUOTED = re.compile(r'class "([^"]+)"')


@dataclass
class Received:
    behaviour: str
    authorization: str | None
    body: dict

    @property
    def asked_class(self) -> str | None:
        found = QUOTED.search(self.body["messages"][-1]["content"])
        return found.group(1) if found else None


def closed_port_url() -> str:
    """An API base on a port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class ChatServer:
    def __init__(self, words: dict[str, list[str]], delay: float = 5.0):
        self.words, self.delay = words, delay
        self.received: list[Received] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True  # a slow answer still sleeping never holds up the test's end
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, behaviour: str) -> str:
        assert behaviour in BEHAVIOURS
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{behaviour}/v1"

    def count(self, behaviour: str | None = None) -> int:
        return sum(1 for r in self.received if behaviour in (None, r.behaviour))

    def _answer(self, behaviour: str, cls: str | None) -> tuple[int, bytes]:
        words = self.words.get(cls or "", [])
        content = {
            "not_json": "Sure! Here are some synonyms: " + ", ".join(words),
            "wrong_shape": json.dumps(words),
            "not_strings": json.dumps({"synonyms": [*words, 7]}),
            "long_phrase": json.dumps({"synonyms": [*words, "a rather long description of the very same thing"]}),
        }.get(behaviour, json.dumps({"synonyms": words}))
        if behaviour == "denied":
            return 401, b'{"error": {"message": "invalid api key"}}'
        reply = {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        }
        return 200, json.dumps(reply).encode()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the name http.server calls)
                behaviour, _, rest = self.path.strip("/").partition("/")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received = Received(behaviour, self.headers.get("Authorization"), body)
                server.received.append(received)
                if rest != "v1/chat/completions" or behaviour not in BEHAVIOURS:
                    status, payload = 404, b'{"error": "not found"}'
                else:
                    if behaviour == "slow":
                        time.sleep(server.delay)
                    status, payload = server._answer(behaviour, received.asked_class)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped waiting, as a slow endpoint's client should

            def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
                pass  # the test reads `received`, not stderr

        return Handler
