"""What every data source is: a sized, indexable sequence of records with a label space.

A loader (:func:`mvm_jax.data.loader.make_loader`) reads a :class:`Source`. Two kinds exist:

- video sources (:mod:`mvm_jax.data.sources`, :mod:`mvm_jax.data.tfds_video`): a
  :class:`~mvm_jax.data.sources.VideoSource` of :class:`~mvm_jax.data.sources.VideoRecord`
  (a video file or blob to decode, its label, a frame range);
- token sources (:mod:`mvm_jax.data.tokens`): a :class:`~mvm_jax.data.tokens.TokenSource` of
  :class:`~mvm_jax.data.tokens.TokenRecord` (a video's pre-extracted VQ codes, its label).

Both are small picklable values, shipped to the Grain worker processes as they are;
``source[i]`` runs there. Neither counts bad records: a record that cannot be read is the
loader's business (``LoaderInfo.skipped``).

This module imports nothing heavy (no Grain, PyAV or TensorFlow).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar, runtime_checkable


@runtime_checkable
class Record(Protocol):
  """One video of a source: what every record has."""

  @property
  def path(self) -> str:
    """The video file (or a :class:`~mvm_jax.data.decode.VideoBlob`'s name): unique per video, named
    in messages."""

  @property
  def label(self) -> int:
    """Class id in ``[0, num_classes)`` of the source."""


RecordT = TypeVar('RecordT', bound=Record, covariant=True)


class Source(Sequence[RecordT], Generic[RecordT]):
  """An immutable sequence of records and the class names their labels index.

  ``len(source)``, ``source[i] -> record`` (``i`` may be negative; out of range: IndexError),
  iteration, ``num_classes``, ``class_names``, and ``name``, the source's description in
  messages (e.g. ``'builtin:train'``, ``'csv:lists/train.csv'``,
  ``'tokens:name/train'``); ``repr(source)`` names it too.
  """

  name: str

  @abc.abstractmethod
  def __len__(self) -> int: ...

  @abc.abstractmethod
  def __getitem__(self, index): ...

  @property
  @abc.abstractmethod
  def class_names(self) -> tuple[str, ...]:
    """Class names; label i is ``class_names[i]``."""

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def position(self, index) -> int:
    """``index`` as a position in ``[0, len(self))`` (a negative index counts from the end).

    Raises:
      IndexError: out of range; the message names the source.
    """
    i = int(index)
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(f'{self!r}: index {index} out of range')
    return i
