"""Train and test a rating model: ``python train.py model=pmf data.split_seed=1``.

Configuration lives in configs/ (Hydra); see the README for the groups and keys. The run directory
(``hydra.run.dir``) receives metrics.json, checkpoints and logs.
"""

import recsys  # noqa: F401, I001 - first: sets OpenMP's wait policy before torch loads; registers the resolvers

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    from recsys.training import train  # imported here so --help and config errors stay fast

    return train(cfg)[cfg.optimized_metric]


if __name__ == "__main__":
    main()
