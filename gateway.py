"""Entry point: `python gateway.py [--config PATH] [--check]` (see README.md)."""
import sys

from openai_gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
