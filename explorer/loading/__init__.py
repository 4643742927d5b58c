"""Loading the user's models and data, safely: every bad file is a ``LoadError`` with one clear
line, never a traceback, and nothing that can run code is loaded without the operator's opt-in."""

from explorer.loading.errors import LoadError, check_file

__all__ = ["LoadError", "check_file"]
