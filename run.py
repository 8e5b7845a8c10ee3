"""Entry point: ``python run.py --model=GRU4RecPaper --dataset=ml-100k`` (see README.md)."""

from recbole_gru4rec.cli import console_main

if __name__ == "__main__":
    console_main()
