"""The Source protocol (mvm_jax/data/source.py): what video and token sources share."""

import pickle

import pytest

from mvm_jax.data import Record, Source, VideoRecord, VideoSource, builtin_source


def test_video_sources_are_sources_of_records():
  source = builtin_source('train')
  assert isinstance(source, Source) and isinstance(source, VideoSource)
  assert len(source) == 8 and source.num_classes == len(source.class_names) == 8
  assert source.name == 'builtin:train' and 'builtin:train' in repr(source)
  records = list(source)
  assert len(records) == 8 and all(isinstance(r, Record) and isinstance(r, VideoRecord) for r in records)
  assert source[-1] == records[-1] and source[1:3] == tuple(records[1:3])
  assert [r.label for r in records] == list(range(8))
  assert isinstance(records[0].path, str)
  copy = pickle.loads(pickle.dumps(source))
  assert list(copy) == records and copy.name == source.name


class _Listed(Source[VideoRecord]):
  """A source holding its records, its class names given."""

  def __init__(self, records, names):
    self._records, self._names, self.name = records, names, 'listed'

  def __len__(self):
    return len(self._records)

  def __getitem__(self, index):
    return self._records[self.position(index)]

  @property
  def class_names(self):
    return self._names


def test_source_base_gives_num_classes_iteration_and_bounds():
  a, b = VideoRecord('a.mp4', 0), VideoRecord('b.mp4', 1)
  source = _Listed([a, b], ('x', 'y'))
  assert source.num_classes == 2 and list(source) == [a, b] and source[-2] is a
  assert source.position(-1) == 1 and b in source
  with pytest.raises(IndexError, match='index 2 out of range'):
    source[2]
  with pytest.raises(IndexError, match='index -3 out of range'):
    source.position(-3)


def test_a_source_without_its_members_is_abstract():
  class NoNames(Source[VideoRecord]):
    def __len__(self):
      return 0

    def __getitem__(self, index):
      raise IndexError(index)

  with pytest.raises(TypeError, match='class_names'):
    NoNames()


def test_record_protocol_is_structural():
  assert isinstance(VideoRecord('a.mp4', 0), Record)
  assert not isinstance(object(), Record)
