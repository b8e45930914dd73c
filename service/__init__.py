"""A REST service that queues, trains, compares and serves Keras CNN experiments."""

# The one place the version is written: pyproject.toml reads it, and the Docker image, which runs
# the source without installing it, has it too.
__version__ = "0.1.0"
