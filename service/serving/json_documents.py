"""JSON request documents read with errors that say what is wrong, never a traceback."""

import json


class InvalidJSONError(ValueError):
    """The document cannot be read as JSON; the message says why."""


def load_json(data: bytes, what: str) -> object:
    """The JSON document in `data`, which the error messages call `what` ("the body")."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidJSONError(f"{what} is not valid JSON ({error})") from None
    except ValueError:
        # How Python refuses an integer of over 4,300 digits; its message would advise
        # changing an interpreter setting.
        raise InvalidJSONError(f"{what} holds a number with too many digits") from None
    except RecursionError:
        raise InvalidJSONError(f"{what} is nested too deeply") from None
