"""Progress bars: the ETA leaves out the first update (compilation); stage clock summary."""

import io

from paced_jax import progress


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_eta_is_unknown_until_a_second_update_then_excludes_the_first(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(progress.time, "monotonic", clock)
  bar = progress.bar(total=10, file=io.StringIO(), mininterval=0)
  clock.now = 120.0              # the first unit paid two minutes of compiling
  bar.update(1)
  assert bar.format_dict["rate"] == 0 and "?" in str(bar)
  clock.now = 124.0              # then 2 units in 4 s: 0.5 unit/s, 7 units left -> 14 s
  bar.update(2)
  assert bar.format_dict["rate"] == 0.5
  assert "00:14" in str(bar)
  bar.close()


def test_a_disabled_bar_counts_nothing():
  bar = progress.bar(total=3, disable=True)
  bar.update(1)
  bar.close()


def test_stage_clock_lists_every_stage():
  clock = progress.StageClock()
  clock.begin("first")
  clock.begin("second")
  lines = clock.summary().splitlines()
  clock.close()
  assert [line.split()[0] for line in lines] == ["first", "second", "total"]
  assert all("compile" in line for line in lines)
