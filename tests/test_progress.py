"""mvm_jax.progress: rate, ETA and the throttled lines, with a fake clock."""

import math

from mvm_jax.progress import Progress, format_duration, skipped_lines


class FakeClock:
  def __init__(self, now=100.0):
    self.now = now

  def __call__(self):
    return self.now


def _progress(total=100, **kw):
  clock, lines = FakeClock(), []
  return Progress('extract train', total, unit='clips', log=lines.append, clock=clock, **kw), clock, lines


def test_format_duration():
  assert format_duration(0.4) == '0:00:00'
  assert format_duration(3725) == '1:02:05'
  assert format_duration(float('nan')) == format_duration(float('inf')) == '?'


def test_rate_eta_and_line():
  progress, clock, lines = _progress(every_s=5.0)
  assert progress.rate == 0.0 and math.isnan(progress.eta)
  clock.now += 2.0
  progress.update(10)  # 2 s after the start: not due
  assert lines == []
  clock.now += 3.0
  progress.update(15)  # 25 clips in 5 s
  assert progress.rate == 5.0 and progress.eta == 15.0
  assert lines == ['extract train: 25/100 clips (25.0%) | 5.0 clips/s | elapsed 0:00:05 | ETA 0:00:15']
  clock.now += 4.0
  progress.update(5)  # 4 s after the last line: not due
  assert len(lines) == 1
  clock.now += 1.0
  progress.update(0)
  assert len(lines) == 2 and lines[-1].startswith('extract train: 30/100 clips (30.0%) | 3.0 clips/s')


def test_the_last_item_is_always_reported_then_the_summary():
  progress, clock, lines = _progress(total=4, every_s=60.0)
  for _ in range(4):
    clock.now += 0.5
    progress.update()
  assert lines == ['extract train: 4/4 clips (100.0%) | 2.0 clips/s | elapsed 0:00:02 | ETA 0:00:00']
  assert progress.summary(' × 768') == 'extract train: 4 clips × 768 in 2.0 s (2.0 clips/s)'


def test_warmup_updates_and_untimed_items_are_not_timed():
  progress, clock, lines = _progress(every_s=1.0, warmup_updates=1)
  clock.now += 30.0  # compiling
  progress.update(10)
  assert (progress.done, progress.timed, progress.elapsed, lines) == (10, 0, 0.0, [])
  assert progress.summary(rate_note=' after the first batch') == 'extract train: 10 clips in 30.0 s'
  clock.now += 2.0
  progress.update(20, timed=False)  # e.g. resumed from an earlier run
  assert progress.untimed == 30 and math.isnan(progress.eta)
  clock.now += 2.0
  progress.update(20)  # 20 timed clips in the 4 s since the warm-up
  assert progress.rate == 5.0 and progress.eta == 50 / 5.0
  assert lines[-1] == 'extract train: 50/100 clips (50.0%) | 5.0 clips/s | elapsed 0:00:34 | ETA 0:00:10'
  summary = progress.summary(rate_note=' after the first batch')
  assert summary == 'extract train: 50 clips in 34.0 s (5.0 clips/s after the first batch)'


def test_a_caller_that_prints_itself_asks_due_and_subclasses_add_details():
  class Packing(Progress):
    def details(self):
      return ['3 skipped']

  clock = FakeClock()
  progress = Packing('packing test', 10, unit='videos', log=None, clock=clock)
  progress.update(2)  # log=None: nothing is logged
  assert not progress.due(every_s=1.0)
  clock.now += 1.0
  assert progress.due(every_s=1.0) and not progress.due(every_s=1.0)  # due() marks the line as reported
  assert progress.due(every_s=0.0)
  assert (
    progress.line()
    == 'packing test: 2/10 videos (20.0%) | 2.0 videos/s | 3 skipped | elapsed 0:00:01 | ETA 0:00:04'
  )


def test_skipped_lines_name_the_first_paths_then_count_the_rest():
  assert skipped_lines(['a.mp4', 'b.mp4'], limit=2) == [
    '  skipped (unreadable): a.mp4',
    '  skipped (unreadable): b.mp4',
  ]
  lines = skipped_lines([f'{i}.mp4' for i in range(25)])
  assert len(lines) == 21 and lines[-1] == '  ... and 5 more' and lines[19].endswith('19.mp4')
