"""The router's errors are one taxonomy (router/errors.py): every exception class the router defines
lives there, derives from RouterError, and names the SQLSTATE a client receives."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import router
from router import errors
from router.errors import RouterError

# Exceptions allowed outside router/errors.py, each for a reason.
ELSEWHERE = {
    # A signal inside the statement analysis's rules (a value the text alone does not give); it never
    # leaves router.sql: the effects rules catch it.
    "router.sql.setting_values.Dynamic",
    # A move's cutover that must wait (the tenant stays on its source); it never leaves
    # router.rebalance: the runner catches it and tries the move again later.
    "router.rebalance.mover.MoveRetry",
}
# The test harness's own errors are not the router's (they fail tests and demos, not clients).
HARNESS = "router.testing."


def _router_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(router.__path__, "router."))


def _exceptions_defined_in(module_name: str) -> list[type[BaseException]]:
    module = importlib.import_module(module_name)
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module_name
    ]


def test_every_exception_class_lives_in_errors_py() -> None:
    outside = {
        f"{module}.{cls.__qualname__}"
        for module in _router_modules()
        if module != "router.errors" and not module.startswith(HARNESS)
        for cls in _exceptions_defined_in(module)
    }
    assert outside <= ELSEWHERE, f"define these in router/errors.py: {sorted(outside - ELSEWHERE)}"


def test_the_protocol_errors_are_found_where_their_callers_look() -> None:
    # Defined in errors.py, re-exported by the sans-IO codecs that raise them.
    from router.protocol.pg import auth, framing

    assert framing.FramingError is errors.FramingError
    assert auth.AuthError is errors.AuthError
    assert issubclass(errors.FramingError, ValueError)  # as before the taxonomy


ERRORS = [value for value in vars(errors).values() if inspect.isclass(value) and issubclass(value, BaseException)]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_each_error_is_a_router_error_naming_its_own_sqlstate(cls: type[BaseException]) -> None:
    assert issubclass(cls, RouterError)
    if cls is not RouterError:
        assert "sqlstate" in vars(cls), f"{cls.__name__} does not say its SQLSTATE"
        assert cls.__doc__, f"{cls.__name__} does not say when it is raised"
    assert re.fullmatch(r"[0-9A-Z]{5}", cls.sqlstate)
    assert cls.severity in ("ERROR", "FATAL")
