"""jaxar: autoregressive generative models in JAX and Flax."""

from jaxar import codec as codec  # the module: jaxar.codec.compress / decompress
from jaxar.config import load_config
from jaxar.models import bits_per_dim, build_model, init_variables, log_prob, ordering
from jaxar.sampling import sample
from jaxar.training.evaluate import evaluate
from jaxar.training.latent import complete as complete_latent
from jaxar.training.latent import generate as generate_latent
from jaxar.training.latent import load as load_latent
from jaxar.training.train import train_and_evaluate

__all__ = [
    "bits_per_dim",
    "build_model",
    "complete_latent",
    "evaluate",
    "generate_latent",
    "init_variables",
    "load_config",
    "load_latent",
    "log_prob",
    "ordering",
    "sample",
    "train_and_evaluate",
]
