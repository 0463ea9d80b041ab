"""python -m escalon.cli — the same as the `escalon` command."""

from escalon.cli import main

main()
