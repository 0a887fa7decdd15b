"""Command-line entry points: `jaxar-train` (`cli.train`) and `jaxar-sample` (`cli.sample`)."""
