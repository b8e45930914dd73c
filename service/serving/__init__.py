"""The serving path, apart from any protocol: a request's images and arrays decoded into a batch
(images.py, instances.py), and the model server (model_server.py) that picks the model
(resolver.py), keeps it loaded (model_cache.py) and batches its calls (batching.py)."""
