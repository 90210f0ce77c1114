"""The one exception type for mistakes a user can make; the CLI prints its message and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input, stated in one sentence that names the thing and the fix."""
