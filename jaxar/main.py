"""`python -m jaxar.main`: the training CLI (`jaxar.cli.train`, i.e. `jaxar-train`) as a module."""

from jaxar.cli.train import run

if __name__ == "__main__":
    run()
