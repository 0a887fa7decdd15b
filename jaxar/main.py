"""`python -m jaxar.main`: the training CLI under its original name (`jaxar.cli.train`)."""

from jaxar.cli.train import run

if __name__ == "__main__":
    run()
