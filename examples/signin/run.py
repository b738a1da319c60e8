"""Starts the whole sign-in demo: a local SMTP server (aiosmtpd) whose mails the demo mailbox page
shows, `codewatch up` delivering codes through it (DELIVERY=smtp), a client generated from codewatch's
OpenAPI document, and the sign-in app (Flask). Prints {"url": ...} once the app listens; Ctrl-C stops it all.

    python run.py --codewatch target/release/codewatch [--port 5000] [--code-ttl 600] [--workdir DIR]
"""

import argparse
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
from email import message_from_string
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller
from werkzeug.serving import make_server

HERE = Path(__file__).resolve().parent


class Mailbox:
    """The mails the demo SMTP server accepted, in memory."""

    def __init__(self):
        self._mails, self._lock = [], threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        mail = message_from_string(envelope.content.decode("utf8", errors="replace"), policy=default_policy)
        body = mail.get_body(preferencelist=("plain",))
        with self._lock:
            self._mails.append(
                {
                    "to": ", ".join(envelope.rcpt_tos),
                    "subject": str(mail["subject"]),
                    "body": body.get_content() if body else "",
                }
            )
        return "250 Message accepted for delivery"

    def mails(self):
        with self._lock:
            return list(self._mails)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--codewatch", required=True, help="the codewatch binary")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--code-ttl", type=int, default=600)
    parser.add_argument("--workdir", default=str(HERE.parent.parent / "target" / "signin-example"))
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()

    key = secrets.token_urlsafe(32)
    env = dict(
        os.environ,
        DELIVERY="smtp",
        SMTP_URL=f"smtp://127.0.0.1:{smtp.port}",
        DELIVERY_MAIL_FROM="Sign-in demo <no-reply@signin.example>",
        VERIFY_API_KEY=key,
        VERIFY_LISTEN_ADDR="127.0.0.1:0",
        DATABASE_URL=f"sqlite:{workdir / 'codewatch.db'}",
        CODE_TTL_SECONDS=str(args.code_ttl),
    )
    log = open(workdir / "codewatch.log", "w")
    up = subprocess.Popen(
        [args.codewatch, "up", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    signin = None
    for line in up.stdout:
        found = re.search(r"sign-in\s+(http://\S+)/api/v1/codes", line)
        if found:
            signin = found.group(1)
            break
    if not signin:
        sys.exit(f"codewatch up did not start; see {workdir / 'codewatch.log'}")

    generator = Path(sys.executable).parent / "openapi-python-client"
    generated = subprocess.run(
        [str(generator), "generate", "--url", f"{signin}/api/openapi.json", "--meta", "none",
         "--output-path", str(workdir / "codewatch_signin"), "--overwrite"],
        capture_output=True,
        text=True,
    )
    if generated.returncode != 0:
        sys.exit(f"generating the client failed:\n{generated.stdout}{generated.stderr}")
    sys.path.insert(0, str(workdir))
    from codewatch_signin import AuthenticatedClient

    from app import create_app

    client = AuthenticatedClient(base_url=signin, token=key)
    app = create_app(client, mailbox, HERE / "users.json")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server(args.host, args.port, app, threaded=True)
    print(json.dumps({"url": f"http://{args.host}:{server.server_port}"}), flush=True)

    def stop(*_):
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        up.terminate()
        up.wait(timeout=30)
        smtp.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
