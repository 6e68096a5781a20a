"""`python -m liger_lm` = the `liger` command."""

from .cli import main

main()
