"""python -m client infer PATH... (see client/cli.py)."""

import sys

from client.cli import main

if __name__ == "__main__":
    sys.exit(main())
