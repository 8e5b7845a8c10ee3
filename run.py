"""Entry point: ``python run.py --model=GRU4RecPaper --dataset=ml-100k`` (see README.md)."""

import sys

from recbole_gru4rec.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
