"""Entry point of python -m client infer PATH... | watch (see client/cli.py, client/watch.py)."""

import sys

from client.cli import main

if __name__ == "__main__":
    sys.exit(main())
