"""The Keras side: building, training and loading models. Keras is imported by the training
child (`child.py`, inside its main function) and by the model server, never by the worker or
the API routes; `messages.py` and `child.py` import none at module level, so the worker can.
"""
