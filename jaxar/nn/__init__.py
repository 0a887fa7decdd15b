"""Layers: masked and shifted convolutions, fast convolution paths, decoding caches."""
