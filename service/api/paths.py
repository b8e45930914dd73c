"""What a request's path says about it: a prediction, a probe, a serving protocol's route.

Read by the middleware (body limits, hosts, cross-site refusal), authentication and the error
handlers, so that each names these paths the same way.
"""

import re

# The routes that take images: /predict and the serving protocols' inference routes.
PREDICTION_PATHS = re.compile(
    r"/predict|/v2/models/[^/]+(/versions/[^/]+)?/infer|/v1/models/[^/]+(/versions/[^/]+)?:predict"
)
# Liveness and readiness, which container orchestrators and load balancers ask for by
# address and without a key; they tell nothing a rebound page could use.
PROBE_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready"})
# The serving protocols (TensorFlow Serving under /v1, Open Inference Protocol under /v2) have
# an error body of their own, which their clients read.
PROTOCOL_ROOTS = ("/v1", "/v2")


def is_prediction(path: str) -> bool:
    return PREDICTION_PATHS.fullmatch(path) is not None


def speaks_protocol(path: str) -> bool:
    """Whether `path` belongs to a serving protocol, whose errors read {"error": "..."}."""
    return path in PROTOCOL_ROOTS or path.startswith(tuple(f"{root}/" for root in PROTOCOL_ROOTS))
