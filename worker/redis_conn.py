"""The Celery broker's TLS options, from the same URL the Redis clients use."""

from __future__ import annotations

import ssl
from urllib.parse import parse_qsl, urlsplit

# ``ssl_cert_reqs`` values, spelled as redis-py spells them in a URL (it
# rejects kombu's extra ``CERT_REQUIRED`` spellings, so those are refused here
# too: one URL must work for the broker and for the store).
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# The parts of ``broker_use_ssl`` a URL can set, as redis-py names them.
_SSL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
# Query parameters kombu's ``Connection`` takes besides ``ssl_*``; it hands
# any other one to ``Connection._init_params`` and fails with a TypeError.
_KOMBU_QUERY = {"connect_timeout", "heartbeat", "login_method", "credential_provider", "insist"}


def broker_ssl_options(url: str) -> dict | None:
    """Celery's ``broker_use_ssl`` for a ``rediss://`` broker URL, else None.

    TLS settings travel in the URL's query string, as redis-py reads them
    (``rediss://user:pw@host:6380/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required``),
    so one URL serves :func:`connect` and the broker. ``ssl_cert_reqs`` defaults
    to ``required``.

    How kombu (5.7) treats the URL: ``Connection`` moves every ``ssl_*`` query
    parameter into its ``ssl`` dict (``ssl_cert_reqs`` turned into an
    ``ssl.CERT_*`` constant) and that dict *replaces* ``broker_use_ssl``; the
    query never reaches redis-py. So the query needs no stripping, and this
    function returns what kombu would build from it. It matters when the query
    has no ``ssl_*`` parameter: without it kombu falls back to ``CERT_NONE``
    (no certificate check at all) for ``rediss://``; here the default is
    ``required`` against the system's CAs, as redis-py does. Any other query
    parameter makes kombu's ``Connection`` fail with a TypeError, so it is
    refused here with a clearer message.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return None  # let kombu report the malformed URL
    query = dict(parse_qsl(parts.query))
    unknown = sorted(k for k in query if not k.startswith("ssl_") and k not in _KOMBU_QUERY)
    if unknown:
        raise ValueError(
            f"broker URL query parameter(s) {', '.join(unknown)} not supported: the Celery broker "
            "(kombu) takes only ssl_* parameters (and its own connect_timeout, heartbeat, "
            "login_method, credential_provider, insist) in a redis:// or rediss:// URL"
        )
    if parts.scheme != "rediss":
        return None
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={reqs!r} in the broker URL: use one of {', '.join(_CERT_REQS)}")
    options: dict = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    for name in _SSL_FILES:
        options[name] = query.get(name)
    if "ssl_check_hostname" in query:  # as kombu reads it
        options["ssl_check_hostname"] = query["ssl_check_hostname"].lower() != "false"
    return options
