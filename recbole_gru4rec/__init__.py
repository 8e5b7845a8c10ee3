"""recbole-gru4rec: a paper-faithful GRU4Rec (Hidasi et al., ICLR 2016) for RecBole 1.2.1.

Importing the package applies the RecBole compatibility fixes (:mod:`recbole_gru4rec.compat`) and registers
GRU4RecPaper with RecBole (:mod:`recbole_gru4rec.registry`): from then on ``run_recbole(model="GRU4RecPaper")``,
``Config(model="GRU4RecPaper", ...)``, ``HyperTuning`` and ``load_data_and_model`` find it by name.
"""

from recbole_gru4rec import compat  # noqa: F401  (applies the RecBole compatibility fixes first)
from recbole_gru4rec.gru4rec_paper import GRU4RecPaper
from recbole_gru4rec.registry import get_model, get_trainer, register
from recbole_gru4rec.session_data import SessionParallelDataLoader
from recbole_gru4rec.trainer import SessionParallelTrainer

__all__ = ["GRU4RecPaper", "SessionParallelDataLoader", "SessionParallelTrainer", "get_model", "get_trainer", "register"]
__version__ = "0.2.0"
