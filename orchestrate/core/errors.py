"""The one family of exceptions that mean "the user must fix something".

Commands turn these (and only these) into a one-line `ERROR: ...` and exit
code 3; any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input or files, with a message that says what to do."""
