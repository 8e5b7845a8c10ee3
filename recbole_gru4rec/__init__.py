"""recbole-gru4rec: a paper-faithful GRU4Rec (Hidasi et al., ICLR 2016) for RecBole 1.2.1."""

from recbole_gru4rec import compat  # noqa: F401  (applies the RecBole compatibility fixes first)
from recbole_gru4rec.gru4rec_paper import GRU4RecPaper
from recbole_gru4rec.session_data import SessionParallelDataLoader
from recbole_gru4rec.trainer import SessionParallelTrainer

__all__ = ["GRU4RecPaper", "SessionParallelDataLoader", "SessionParallelTrainer"]
__version__ = "0.1.0"
