"""Files that several processes write (drift reports, windows, the monitor's state) are replaced whole, each writer
through its own temporary file."""

import threading

import pytest

from pipelines.workspace import replacing


def test_interleaved_writers_of_one_target_each_replace_it_whole(tmp_path):
    target = tmp_path / "report.html"
    both_open = threading.Barrier(2)
    errors = []

    def write(text):
        try:
            with replacing(target) as partial:
                partial.write_text(text * 1000)
                both_open.wait(timeout=10)  # the other writer is mid-write too
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target) as partial:
            partial.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
