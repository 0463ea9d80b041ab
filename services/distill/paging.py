"""ListJobs' page tokens: where the next page starts (creation time, job id) and the filters it was made for."""

from __future__ import annotations

import base64
import datetime as dt
import json


def encode_page_token(created_at: dt.datetime, job_id: str, filters: dict[str, str]) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "j": job_id, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, filters: dict[str, str]) -> tuple[dt.datetime, str]:
    """Raise ValueError for a malformed token or one made for other filters."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        created_at = dt.datetime.fromisoformat(raw["c"])
        job_id = str(raw["j"])
        made_for = raw["f"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("not a page token returned by ListJobs") from exc
    if made_for != filters:
        raise ValueError("the page token was made for other filters; repeat the first call's state and kind")
    return created_at, job_id
