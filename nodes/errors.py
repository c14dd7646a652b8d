"""Turning the core's errors into messages that name the node, as ComfyUI shows them to the user."""

import contextlib
from collections.abc import Callable

from ..ipadapter_core.errors import IPAdapterError


@contextlib.contextmanager
def errors_named_for(display_name: str):
    try:
        yield
    except IPAdapterError as error:
        raise IPAdapterError(f"{display_name}: {error}") from error


def validation_result(value, check: Callable[[object], object]) -> bool | str:
    """What a V3 `validate_inputs` returns for one input: True when `check(value)` passes, else its IPAdapterError's
    message, which ComfyUI shows when it refuses the prompt. A linked input (None before it runs) passes here and is
    checked when the node runs."""
    if value is None:
        return True
    try:
        check(value)
    except IPAdapterError as error:
        return str(error)
    return True


def first_refusal(*checks: tuple[object, Callable[[object], object]]) -> bool | str:
    """`validation_result` over several (value, check) pairs: the first refusal's message, else True."""
    for value, check in checks:
        result = validation_result(value, check)
        if result is not True:
            return result
    return True


def one_of(options, *, input_name: str) -> Callable[[object], None]:
    """A check for a combo value (ComfyUI 0.3.75 does not check V3 combos at queue time, and an input our
    `validate_inputs` takes is not checked by ComfyUI on any host): an IPAdapterError naming the input and the
    options."""
    allowed = list(options)

    def check(value) -> None:
        if value not in allowed:
            raise IPAdapterError(f"'{value}' is not an option of {input_name}; use one of: {', '.join(map(str, allowed))}.")

    return check
