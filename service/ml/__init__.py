"""The Keras side: building, training and loading models. Only the training process and the
model server import it; the worker and the API routes never do."""
