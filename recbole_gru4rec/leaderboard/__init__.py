"""``python run.py --leaderboard``: :mod:`.runner` trains the entries, :mod:`.report` writes the table and plot."""
