"""A small sign-in service that uses codewatch for its second factor: user name and password, then a
code that codewatch mails to the user, then "signed in". It talks to codewatch only through the client
generated from codewatch's OpenAPI document (package `codewatch_signin`).

The pages: / (log in), /code (we sent you a code; type it), /welcome (signed in), /mailbox (the demo
SMTP server's mails, so a person can read their code without a real mailbox).
"""

import json
import secrets
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
from flask import Flask, redirect, render_template_string, request, session, url_for
from werkzeug.security import check_password_hash

# Wrong codes a user may type before the code is burned (codewatch's VERIFY_MAX_WRONG_PER_CODE).
MAX_WRONG = 5

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · sign-in demo</title>
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<style>
 body { font-family: system-ui, sans-serif; max-width: 34rem; margin: 3rem auto; padding: 0 1rem; color: #1d2330; }
 h1 { font-size: 1.5rem; } form { display: grid; gap: .6rem; margin: 1rem 0; }
 input { font-size: 1.1rem; padding: .45rem; } button { font-size: 1rem; padding: .5rem; cursor: pointer; }
 .note { background: #eef4ff; padding: .6rem .8rem; border-radius: .4rem; }
 .error { background: #ffecec; padding: .6rem .8rem; border-radius: .4rem; }
 .mail { border: 1px solid #ccd; border-radius: .4rem; padding: .6rem .8rem; margin: .8rem 0; }
 pre { white-space: pre-wrap; } nav { margin-top: 2rem; font-size: .9rem; }
</style></head>
<body><h1>{{ title }}</h1>
{% if message %}<p id="message" class="{{ kind }}">{{ message }}</p>{% endif %}
{{ body | safe }}
<nav><a href="{{ url_for('index') }}">Sign-in</a> · <a href="{{ url_for('mailbox') }}" target="mailbox">Demo mailbox</a></nav>
</body></html>"""


def page(title, body="", message=None, kind="note", refresh=None, **values):
    return render_template_string(
        PAGE,
        title=title,
        body=render_template_string(body, **values),
        message=message,
        kind=kind,
        refresh=refresh,
    )


def masked(address):
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def create_app(client, mailbox, users_file):
    """The app, issuing and redeeming through `client` (a codewatch_signin AuthenticatedClient);
    `mailbox` lists the mails the demo SMTP server received."""
    from codewatch_signin.api.sign_in import issue, redeem
    from codewatch_signin.models import CodeAttempt, IssueRequest, ValidCode

    users = json.loads(Path(users_file).read_text())
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)

    def send_code(user):
        """Asks codewatch to mail a code to the user; remembers which issuance and until when."""
        answer = issue.sync_detailed(
            client=client, body=IssueRequest(subject=user, destination=users[user]["email"])
        )
        if answer.status_code != 201:
            return False
        issued = json.loads(answer.content)
        session["pending"] = {
            "user": user,
            "expires_at": issued["expires_at"],
            "wrong": 0,
        }
        return True

    @app.get("/")
    def index():
        if "user" in session:
            return redirect(url_for("welcome"))
        return page(
            "Sign in",
            """<form method="post" action="{{ url_for('login') }}">
                 <label>User name <input id="user" name="user" autocomplete="username" required></label>
                 <label>Password <input id="password" name="password" type="password" autocomplete="current-password" required></label>
                 <button id="login">Continue</button></form>
               <p>Demo users: alice / wonderland, bob / builder.</p>""",
        )

    @app.post("/login")
    def login():
        user = request.form.get("user", "")
        known = users.get(user)
        if not known or not check_password_hash(known["password"], request.form.get("password", "")):
            return page("Sign in", message="Wrong user name or password.", kind="error"), 401
        if not send_code(user):
            return page("Sign in", message="We could not send a code; try again.", kind="error"), 503
        return redirect(url_for("code"))

    @app.get("/code")
    def code():
        pending = session.get("pending")
        if not pending:
            return redirect(url_for("index"))
        return code_page(pending, request.args.get("sent") and "A new code is on its way.")

    def code_page(pending, message=None, kind="note", burned=False):
        expires = datetime.fromisoformat(pending["expires_at"]).strftime("%H:%M:%S UTC")
        form = "" if burned else """<form method="post" action="{{ url_for('check') }}">
                 <label>Code <input id="code" name="code" autocomplete="one-time-code" placeholder="abc-123-XyZ" required></label>
                 <button id="submit">Sign in</button></form>"""
        return page(
            "Enter your code",
            f"""<p id="sent">We sent a code to {{{{ to }}}}. It expires at {{{{ expires }}}}.</p>
               {form}
               <form method="post" action="{{{{ url_for('resend') }}}}"><button id="resend">Send a new code</button></form>""",
            message=message,
            kind=kind,
            to=masked(users[pending["user"]]["email"]),
            expires=expires,
        )

    @app.post("/code")
    def check():
        pending = session.get("pending")
        if not pending:
            return redirect(url_for("index"))
        if pending["wrong"] >= MAX_WRONG:
            return code_page(pending, "Five wrong codes: this code no longer works. Send a new code.", "error", True), 403
        if datetime.now(timezone.utc) >= datetime.fromisoformat(pending["expires_at"]):
            return code_page(pending, "Your code expired. Send a new code.", "error", True), 403
        attempt = CodeAttempt(code=request.form.get("code", "").strip(), subject=pending["user"])
        key = str(uuid.uuid4())  # one per attempt: a retry after a lost answer gets the same answer
        for _ in range(3):
            try:
                answer = redeem.sync(client=client, body=attempt, idempotency_key=key)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            return code_page(pending, "The sign-in service is unreachable; try again.", "error"), 503
        if isinstance(answer, ValidCode):
            session.pop("pending")
            session["user"] = pending["user"]
            return redirect(url_for("welcome"))
        pending["wrong"] += 1
        session["pending"] = pending
        if pending["wrong"] >= MAX_WRONG:
            return code_page(pending, "Five wrong codes: this code no longer works. Send a new code.", "error", True), 403
        left = MAX_WRONG - pending["wrong"]
        return code_page(pending, f"Wrong code. {left} tries left.", "error"), 401

    @app.post("/resend")
    def resend():
        pending = session.get("pending")
        if not pending:
            return redirect(url_for("index"))
        if not send_code(pending["user"]):
            return code_page(pending, "We could not send a code; try again.", "error"), 503
        return redirect(url_for("code", sent=1))

    @app.get("/welcome")
    def welcome():
        user = session.get("user")
        if not user:
            return redirect(url_for("index"))
        return page(
            "Welcome",
            """<p id="signed-in">Signed in as {{ user }}.</p>
               <form method="post" action="{{ url_for('logout') }}"><button id="logout">Sign out</button></form>""",
            user=user,
        )

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("index"))

    def mailbox_page():
        return page(
            "Demo mailbox",
            """<p>What the local SMTP server received (newest first). A real deployment mails the user.</p>
               {% for m in mails %}<div class="mail"><b>To:</b> {{ m.to }}<br><b>Subject:</b> {{ m.subject }}
               <pre class="body">{{ m.body }}</pre></div>{% else %}<p id="empty">No mail yet.</p>{% endfor %}""",
            refresh=3,
            mails=list(reversed(mailbox.mails())),
        )

    app.add_url_rule("/mailbox", "mailbox", mailbox_page, methods=["GET"])
    return app
