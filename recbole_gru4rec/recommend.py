"""Next-movie recommendations from a trained checkpoint, for known users or any watch history.

    from recbole_gru4rec.recommend import recommend, Recommender
    recommend("saved/GRU4RecPaper-....pth", user="196", topk=10)   # one call, loads everything
    recommender = Recommender("saved/GRU4RecPaper-....pth")         # load once, then ask many times
    recommender.for_user("196", topk=10)          # a known user's whole history
    recommender.for_history(["242", "302"])       # a new user's watch history (raw item ids)
    recommender.for_titles(["Toy Story", "Jumanji"])

Each call returns a list of dicts: rank, item_id (the dataset's raw id), title, year, score.
"""

import csv
import difflib
import os
import tempfile

import torch
import yaml
from recbole.config import Config
from recbole.data.interaction import Interaction
from recbole.utils import ModelType

from recbole_gru4rec import compat, pipeline, registry
from recbole_gru4rec.errors import UsageError
from recbole_gru4rec.session_data import user_sessions


def read_titles(config):
    """raw item id -> (title, year) from the dataset's .item file, or {} when there is none.

    The title is the one free-text column, so a line with more tab-separated fields than the header has
    tabs inside its title: they are kept as part of it. Lines with fewer fields than the header are skipped.
    """
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [name.split(":")[0] for name in next(rows)]
        columns = {name: index for index, name in enumerate(header)}
        title_column = next((name for name in ("movie_title", "title", "name") if name in columns), None)
        if config["ITEM_ID_FIELD"] not in columns or title_column is None:
            return {}
        item, title, year = columns[config["ITEM_ID_FIELD"]], columns[title_column], columns.get("release_year")
        titles = {}
        for row in rows:
            extra = len(row) - len(header)
            if extra < 0:
                continue
            row = row[:title] + ["\t".join(row[title : title + extra + 1])] + row[title + extra + 1 :]
            titles[row[item]] = (row[title], row[year] if year is not None else "")
        return titles


class Recommender:
    """A trained sequential model with its dataset, ready to recommend (loaded once, used many times)."""

    def __init__(self, checkpoint_path):
        checkpoint = compat.load_checkpoint(checkpoint_path)
        saved = checkpoint["config"]
        model_cls = registry.get_model(saved["model"])
        if model_cls.type != ModelType.SEQUENTIAL:
            raise UsageError(f"checkpoint {checkpoint_path!r} holds {saved['model']}, not a sequential model")
        self.config = self._config(model_cls, saved["dataset"], checkpoint["external_config"])
        data_file = os.path.join(self.config["data_path"], f"{saved['dataset']}.inter")
        if not os.path.isfile(data_file):
            raise UsageError(f"the dataset of checkpoint {checkpoint_path!r} is not found: no file {data_file}")
        self.dataset = pipeline.load_dataset(self.config)
        self.dataset.build()  # turns the loaded table into RecBole's prefix-augmented form (all events)
        self.model = model_cls(self.config, self.dataset)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.eval()
        self.sessions = user_sessions(self.dataset)
        self.item_tokens = self.dataset.field2id_token[self.config["ITEM_ID_FIELD"]]
        self.user_tokens = self.dataset.field2id_token[self.config["USER_ID_FIELD"]]
        self.titles = read_titles(self.config)
        self.max_length = self.config["MAX_ITEM_LIST_LENGTH"]

    @staticmethod
    def _config(model_cls, dataset, external_config):
        # Through a YAML file, not config_dict: RecBole eval()s the strings of config_dict, and a checkpoint's
        # strings must never run as code.
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as f:
            yaml.safe_dump(external_config, f)
        try:
            with compat.recbole_argv():
                config = Config(model=model_cls, dataset=dataset, config_file_list=[f.name],
                                config_dict={"state": "ERROR", "use_gpu": False})
        finally:
            os.unlink(f.name)
        return compat.honour_use_gpu(config)

    # ---- ids and titles ----

    def item_index(self, raw_id):
        """The model's index of a raw item id."""
        try:
            return self.dataset.token2id(self.config["ITEM_ID_FIELD"], str(raw_id))
        except ValueError:
            raise UsageError(f"unknown item id {raw_id!r}: not in dataset {self.config['dataset']!r}") from None

    def item_for_title(self, title):
        """The raw item id whose title is ``title`` (case-insensitive; "Title (Year)" also matches)."""
        wanted = title.strip().lower()
        known = self.dataset.field2token_id[self.config["ITEM_ID_FIELD"]]
        matches = [raw for raw, (name, year) in self.titles.items()
                   if raw in known and wanted in (name.lower(), f"{name} ({year})".lower())]
        if len(matches) == 1:
            return matches[0]
        if matches:
            found = "; ".join(f"{raw}: {self.titles[raw][0]} ({self.titles[raw][1]})" for raw in matches[:8])
            raise UsageError(f"title {title!r} is ambiguous: {found}; pass --history with item ids")
        close = difflib.get_close_matches(title.strip(), sorted({name for name, _ in self.titles.values()}), n=5)
        hint = f"closest titles: {', '.join(close)}" if close else "no title is close"
        raise UsageError(f"no movie titled {title!r}; {hint}")

    # ---- recommending ----

    def recommend(self, histories, topk=10, exclude_seen=True, users=None):
        """Top-``topk`` items after each history (lists of model item indices), as lists of dicts."""
        if topk < 1:
            raise UsageError(f"topk={topk} is not allowed: expected an integer >= 1")
        # A model that reads any length (an RNN) reads the whole history; others their MAX_ITEM_LIST_LENGTH window.
        longest = max(len(h) for h in histories)
        length = longest if getattr(self.model, "reads_any_length", False) else min(longest, self.max_length)
        sequences = torch.zeros(len(histories), length, dtype=torch.long)
        for row, history in enumerate(histories):
            recent = history[-length:]
            sequences[row, : len(recent)] = torch.as_tensor(recent)
        fields = {
            self.model.ITEM_SEQ: sequences,
            self.model.ITEM_SEQ_LEN: torch.tensor([min(len(h), length) for h in histories]),
            self.config["USER_ID_FIELD"]: torch.as_tensor(users if users is not None else [0] * len(histories)),
        }
        with torch.no_grad():
            scores = self.model.full_sort_predict(Interaction(fields)).view(len(histories), -1)
        scores[:, 0] = float("-inf")  # padding
        if exclude_seen:
            for row, history in enumerate(histories):
                scores[row, torch.as_tensor(history)] = float("-inf")
        top_scores, top_items = scores.topk(min(topk, scores.shape[1] - 1), dim=1)
        return [
            [self._describe(rank, int(item), float(score))
             for rank, (item, score) in enumerate(zip(items.tolist(), values.tolist()), start=1) if score > float("-inf")]
            for items, values in zip(top_items, top_scores)
        ]

    def _describe(self, rank, item, score):
        raw = str(self.item_tokens[item])
        title, year = self.titles.get(raw, ("", ""))
        return {"rank": rank, "item_id": raw, "title": title, "year": year, "score": round(score, 6)}

    def user_history(self, raw_user):
        """The model item indices of a known user's whole history, in time order."""
        try:
            user = self.dataset.token2id(self.config["USER_ID_FIELD"], str(raw_user))
        except ValueError:
            user = None
        if user not in self.sessions.index_of_user:
            raise UsageError(f"unknown user id {raw_user!r}: not in dataset {self.config['dataset']!r}")
        return self.sessions.session(self.sessions.index_of_user[user]).tolist(), user

    def for_users(self, raw_users, topk=10, exclude_seen=True):
        """Recommendations for known users, each from their whole history."""
        histories, users = zip(*(self.user_history(user) for user in raw_users))
        return self.recommend(list(histories), topk, exclude_seen, users=list(users))

    def for_user(self, raw_user, topk=10, exclude_seen=True):
        """Recommendations for one known user."""
        return self.for_users([raw_user], topk, exclude_seen)[0]

    def for_history(self, raw_items, topk=10, exclude_seen=True):
        """Recommendations after an arbitrary watch history of raw item ids (oldest first)."""
        if not raw_items:
            raise UsageError("the history is empty: give at least one item id or title")
        return self.recommend([[self.item_index(item) for item in raw_items]], topk, exclude_seen)[0]

    def for_titles(self, titles, topk=10, exclude_seen=True):
        """Recommendations after a watch history given by movie titles (oldest first)."""
        if not self.titles:
            raise UsageError(f"dataset {self.config['dataset']!r} has no .item file with titles; use item ids")
        return self.for_history([self.item_for_title(title) for title in titles], topk, exclude_seen)


def recommend(checkpoint, user=None, history=None, titles=None, topk=10, exclude_seen=True):
    """Top-``topk`` next items from ``checkpoint`` for one of: a known ``user``, a ``history`` of raw item
    ids, or a history of movie ``titles`` (oldest first). Returns what ``run.py recommend --json`` prints."""
    given = [name for name, value in (("user", user), ("history", history), ("titles", titles)) if value is not None]
    if len(given) != 1:
        raise UsageError(f"give exactly one of user, history or titles (got {', '.join(given) or 'none'})")
    recommender = Recommender(checkpoint)
    if user is not None:
        return recommender.for_user(user, topk, exclude_seen)
    if history is not None:
        return recommender.for_history(list(history), topk, exclude_seen)
    return recommender.for_titles(list(titles), topk, exclude_seen)
