"""`python -m livescope.cli`: the same as the `livescope` command."""

from livescope.cli import main

main()
