"""`python -m batchpredict`: the same CLI."""

from batchpredict.cli import console

console()
