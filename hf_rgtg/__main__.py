"""`python -m hf_rgtg`: the `hf-rgtg` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
