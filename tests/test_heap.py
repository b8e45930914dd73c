"""The API process's frozen heap: start-up freezes what is new and thaws nothing."""

import gc
import weakref

from fastapi.testclient import TestClient

from service.api import create_app
from tests.conftest import SQLITE_ONLY


class Cycle:
    """Garbage only a full collection finds: it refers to itself."""

    def __init__(self) -> None:
        self.itself = self


@SQLITE_ONLY
def test_starting_an_app_leaves_an_earlier_freeze_alone(settings):
    garbage = Cycle()
    collected = weakref.ref(garbage)
    gc.freeze()
    del garbage
    try:
        with TestClient(create_app(settings)):
            # Not walked at start-up, so not collected: a process that starts app after app
            # does not pay a full collection of its whole heap for each.
            assert collected() is not None
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    gc.collect()
    assert collected() is None
