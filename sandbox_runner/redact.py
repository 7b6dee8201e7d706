"""Credentials out of everything we write or log: URLs in messages, metrics, published context, triage bundles.

Job documents carry URLs such as ``https://user:token@host/x`` or presigned S3 links
(``?X-Amz-Signature=...``); those end up in error messages, ``inputs_localized`` metrics, ``<id>.context.json`` of a
published dataset and the triage bundle unless every writer goes through here.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

REDACTED = "REDACTED"

#: query parameters that are credentials (presigned S3/GCS/Azure links, OAuth tokens, API keys)
_SECRET_PARAMS = re.compile(
    r"(?i)^(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|sig|signature|"
    r"token|access_token|id_token|refresh_token|api_?key|apikey|password|passwd|secret|client_secret|"
    r"awsaccesskeyid|se?curity-?token)$"
)
# scheme://user:password@  or  scheme://token@  inside free text
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@'\"<>]+)@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>[?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|sig|signature|token|access_token|id_token|refresh_token|api_?key|apikey|password|"
    r"passwd|secret|client_secret|awsaccesskeyid)=)(?P<value>[^&\s'\"<>#]+)"
)
# AWS-style key material that sometimes lands in logs outside any URL
_AWS_SECRET = re.compile(r"(?i)(?P<key>aws_secret_access_key|aws_session_token)(?P<sep>\s*[=:]\s*)(?P<value>\S+)")


def redact_url(url: str) -> str:
    """``url`` with its password (or bare token user) and credential query parameters replaced."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        # a lone userinfo is often a token (https://<token>@github.com): hide it too
        netloc = f"{user}:{REDACTED}@{host}" if sep else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAMS.match(k) for k, _ in pairs):
            query = urllib.parse.urlencode(
                [(k, REDACTED if _SECRET_PARAMS.match(k) else v) for k, v in pairs], safe="/:")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL credential in free text (logs, JSON, scripts) replaced."""
    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m["userinfo"].partition(":")
        return f"{m['scheme']}{user}:{REDACTED}@" if sep else f"{m['scheme']}{REDACTED}@"

    text = _USERINFO.sub(userinfo, text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)
    return _AWS_SECRET.sub(lambda m: f"{m['key']}{m['sep']}{REDACTED}", text)


def redact_obj(obj: Any) -> Any:
    """A JSON-like value with every string passed through :func:`redact_text` (keys are left alone)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj
