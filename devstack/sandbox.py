"""``grants sandbox``: serve the local inventory backend."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from sandbox import server

    p = sub.add_parser(
        "sandbox",
        help="serve a local Xsolla inventory API (tests, demo, benchmark)",
        description="A local Xsolla inventory API with an audit log, balances and fault injection.",
    )
    server.add_arguments(p)

    def run(args: argparse.Namespace, _settings: object) -> int:
        server.run(args)
        return 0

    p.set_defaults(run=run)
