"""`python -m quant` runs the CLI."""

from quant.cli.main import main

if __name__ == "__main__":
    main()
