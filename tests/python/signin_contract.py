"""The sign-in contract, driven through clients generated from codewatch's served OpenAPI documents.

Run by tests/processes/signin.rs against a live `codewatch up` (sign-in API on a listener of its own),
with the generated packages `codewatch_signin` and `codewatch_public` on PYTHONPATH and
CODEWATCH_URL, CODEWATCH_SIGNIN_URL and VERIFY_API_KEY set. Prints `CODE <code>` for every code it
saw, so that the caller can look for them in the service's log and metrics.
"""

import os
import time
import uuid

import httpx

from codewatch_public import Client
from codewatch_public.api.getcode import get_code
from codewatch_signin import AuthenticatedClient
from codewatch_signin.api.sign_in import check, issue, redeem
from codewatch_signin.models import (
    CodeAttempt,
    ErrorBody,
    IssuedCode,
    IssueRequest,
    NotValid,
    ValidCode,
)


def main() -> None:
    signin = AuthenticatedClient(
        base_url=os.environ["CODEWATCH_SIGNIN_URL"], token=os.environ["VERIFY_API_KEY"]
    )
    public = Client(base_url=os.environ["CODEWATCH_URL"])
    user = f"contract-{uuid.uuid4().hex[:8]}"

    # The sample's public getcode still answers, unbound.
    unbound = get_code.sync(client=public)
    assert unbound is not None and unbound.code, unbound
    print("CODE", unbound.code)

    # Issue a code bound to the user.
    issued = issue.sync_detailed(client=signin, body=IssueRequest(subject=user))
    assert issued.status_code == 201, issued
    assert isinstance(issued.parsed, IssuedCode), issued.parsed
    assert issued.headers["cache-control"] == "no-store"
    code = issued.parsed.code
    print("CODE", code)
    assert issued.parsed.subject == user

    # Without the key, nothing.
    anonymous = AuthenticatedClient(base_url=os.environ["CODEWATCH_SIGNIN_URL"], token="wrong")
    refused = issue.sync_detailed(client=anonymous, body=IssueRequest(subject=user))
    assert refused.status_code == 401 and isinstance(refused.parsed, ErrorBody), refused

    # The worker makes it valid within about a second.
    attempt = CodeAttempt(code=code, subject=user)
    deadline = time.monotonic() + 20
    while True:
        valid = check.sync(client=signin, body=attempt)
        if isinstance(valid, ValidCode) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert isinstance(valid, ValidCode), valid
    assert valid.valid and valid.subject == user and valid.expires_at > valid.issued_at
    # The answer names the issuance, not the code.
    assert valid.issuance_id == issued.parsed.issuance_id, valid
    assert code not in str(valid.to_dict()), valid

    # A wrong code, and the right code for someone else: the one "not valid" answer.
    for wrong in (CodeAttempt(code="Wro-000-Ngg", subject=user), CodeAttempt(code=code, subject="mallory")):
        answer = check.sync_detailed(client=signin, body=wrong)
        assert answer.status_code == 404 and isinstance(answer.parsed, NotValid), answer
        assert answer.parsed.valid is False

    # No subject: refused, since unbound codes are not allowed.
    unnamed = check.sync_detailed(client=signin, body=CodeAttempt(code=code))
    assert unnamed.status_code == 400 and isinstance(unnamed.parsed, ErrorBody), unnamed

    # Redeem with an idempotency key, then repeat it as a client would after a lost answer.
    key = str(uuid.uuid4())
    first = redeem.sync_detailed(client=signin, body=attempt, idempotency_key=key)
    assert first.status_code == 200 and isinstance(first.parsed, ValidCode), first
    assert first.parsed.redeemed_at is not None
    again = redeem.sync_detailed(client=signin, body=attempt, idempotency_key=key)
    assert again.status_code == 200, again
    assert again.headers["idempotent-replayed"] == "true"
    assert again.parsed.to_dict() == first.parsed.to_dict()
    reused = redeem.sync_detailed(
        client=signin, body=CodeAttempt(code="Oth-111-Err", subject=user), idempotency_key=key
    )
    assert reused.status_code == 422 and reused.parsed.error == "idempotency_key_reused", reused

    # Without a key, a second redeem finds the code consumed.
    spent = redeem.sync_detailed(client=signin, body=attempt)
    assert spent.status_code == 404, spent

    # The GET check is gone.
    with httpx.Client(base_url=os.environ["CODEWATCH_SIGNIN_URL"]) as raw:
        old = raw.get(f"/api/v1/codes/{code}", params={"subject": user},
                      headers={"Authorization": f"Bearer {os.environ['VERIFY_API_KEY']}"})
        assert old.status_code == 404, old
    print("signin contract: ok")


if __name__ == "__main__":
    main()
