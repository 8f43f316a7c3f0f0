"""recsys: recommendation with matrix factorization and its descendants (rating prediction and top-N ranking) on
PyTorch Lightning.

``recsys.load(run)`` returns a :class:`recsys.Recommender` that answers in the data set's own ids.
"""

from recsys import threads as _threads

_threads.wait_passively()  # before anything loads the OpenMP runtime (torch): threads sleep at barriers

from recsys import resolvers as _resolvers  # noqa: E402 - after the wait policy, on purpose

__version__ = "0.1.0"
__all__ = ["Recommender", "load"]

_resolvers.register()  # ${recsys.feedback:...} and the rest, for every config composed in this process


def __getattr__(name: str):
    if name == "load":  # imported on first use: `import recsys` stays light
        from recsys import blend

        return blend.load  # a run, a checkpoint or a blend directory
    if name == "Recommender":
        from recsys import recommender

        return recommender.Recommender
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
