"""The serving path: image decoding, the model server (look-up, cache, micro-batcher) and
what a prediction says."""
