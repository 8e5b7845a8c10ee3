"""``python -m recbole_gru4rec``: the same command line as ``run.py`` and ``recbole-gru4rec``."""

from recbole_gru4rec.cli import console_main

console_main()
