"""Rating models. Each lives in its own module with a matching configs/model/<name>.yaml."""

from recsys.models.base import RatingModel
from recsys.models.mf import BiasedMF
from recsys.models.pmf import PMF
from recsys.models.pmf_sigmoid import SigmoidPMF

__all__ = ["RatingModel", "BiasedMF", "PMF", "SigmoidPMF"]
