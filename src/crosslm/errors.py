"""The one exception type users see for bad input, so the CLI can print it cleanly."""


class CrossLMError(Exception):
    """Bad input or an impossible request, with a message that names what to fix."""
