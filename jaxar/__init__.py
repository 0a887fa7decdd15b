"""jaxar: autoregressive generative models in JAX and Flax."""

from jaxar.config import load_config
from jaxar.models import bits_per_dim, build_model, init_variables, log_prob, ordering
from jaxar.sampling import sample
from jaxar.training.train import train_and_evaluate

__all__ = [
    "bits_per_dim",
    "build_model",
    "init_variables",
    "load_config",
    "log_prob",
    "ordering",
    "sample",
    "train_and_evaluate",
]
