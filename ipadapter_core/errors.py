"""The one error type of the pack's core: its message names the file or input and says what to do."""


class IPAdapterError(ValueError):
    pass
