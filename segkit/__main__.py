"""``python -m segkit``: the command line."""

from segkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
