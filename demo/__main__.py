"""Entry point of python -m demo (see demo/walkthrough.py)."""

import sys

from demo.walkthrough import main

if __name__ == "__main__":
    sys.exit(main())
