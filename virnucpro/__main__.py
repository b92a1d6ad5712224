"""`python -m virnucpro` runs the command line."""

from virnucpro.entry import main

main()
