"""`python -m virnucpro` runs the command line."""

from virnucpro.cli import main

main()
