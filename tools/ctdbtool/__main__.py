"""`python -m tools.ctdbtool`: the same tool as the `ctdbtool` script."""

from tools.ctdbtool import main

main()
