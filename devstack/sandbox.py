"""``grants sandbox``: serve the local inventory backend."""

from __future__ import annotations


def add_parser(sub) -> None:
    from sandbox import server

    p = sub.add_parser(
        "sandbox",
        help="serve a local Xsolla inventory API (tests, demo, benchmark)",
        description="A local Xsolla inventory API with an audit log, balances and fault injection.",
    )
    server.add_arguments(p)
    p.set_defaults(run=lambda args, _settings: server.run(args) or 0)
