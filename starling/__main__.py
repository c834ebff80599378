"""`python -m starling ...` = the `starling` console script (containers run from source without installing)."""

from starling.cli import main

main()
