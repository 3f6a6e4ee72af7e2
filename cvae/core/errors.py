"""The one exception type the CLI turns into a readable message and a non-zero exit."""


class CvaeError(Exception):
    """A problem the user can fix (bad input, bad params, failed validation)."""
