"""``python -m prunetune`` — the same as the ``prunetune`` command."""

from prunetune.search.cli import main

main()
