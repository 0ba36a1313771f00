"""What publishing to the Hugging Face Hub shares (`editeval datasets publish`, `editeval stats publish`):
repo-id checks, the authenticated client, and upload errors as one line."""

from __future__ import annotations

import re
from contextlib import contextmanager

from editeval.errors import EditevalError

REPO_ID = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"


def check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(REPO_ID, repo_id):
        raise EditevalError(f"--repo-id must look like ORG/NAME, got '{repo_id}'")


def authenticated_api():
    """An `HfApi` with the user's token; without one, a one-line refusal (dry runs need none)."""
    import huggingface_hub

    token = huggingface_hub.get_token()
    if not token:
        raise EditevalError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login`, then publish again (--dry-run needs none)"
        )
    return huggingface_hub.HfApi(token=token)


@contextmanager
def upload_errors(what: str):
    """Network, auth or offline-mode failures of an upload as one `error:` line, no traceback."""
    try:
        yield
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise EditevalError(f"upload of {what} failed: {first}") from None
