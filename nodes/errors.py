"""Turning the core's errors into messages that name the node, as ComfyUI shows them to the user."""

import contextlib

from ..ipadapter_core.errors import IPAdapterError


@contextlib.contextmanager
def errors_named_for(display_name: str):
    try:
        yield
    except IPAdapterError as error:
        raise IPAdapterError(f"{display_name}: {error}") from error
