"""The error a data pipeline raises for data found broken while training reads it.

What can be checked cheaply is checked at start-up (IDX headers, sizes and labels; tfds
metadata); what only a read can find (a tfds record whose label is out of range, an image that
does not decode) raises `DataError` with the source and the example's index. The loop lets the
pending checkpoint saves finish, so the last good checkpoint stays, and the command line says
it in one line with exit status 2.
"""


class DataError(ValueError):
  """Broken data met while reading: names the source, the split and the example."""
