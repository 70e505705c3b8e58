"""The errors a user can fix: a bad file, flag or setting (`InputError`, the one base class), and
the dataset errors that the readers of several layers raise.

Library code raises a subclass (or `InputError` itself) whose message is one sentence naming the
file or flag, the field and what was expected. The `gaedit` command prints such an error as one
line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
  """A user-fixable problem with an input: a file, a folder, a flag or a setting."""


class DatasetError(InputError):
  """A dataset file is malformed: the message names the file, the key and the expected value."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
  """A file the dataset refers to does not exist."""
