"""``python -m sandbox --port N``: run the fake Xsolla, Backpack and PlayFab APIs."""

import argparse

from sandbox.server import add_arguments, run


def main() -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox", description="Local fake of Xsolla's inventory API, Xsolla Backpack and PlayFab."
    )
    add_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
