"""The index's reader/writer lock (locking.py)."""

from __future__ import annotations

import threading

from megaclass.python_backend.index.locking import RWLock


def test_the_lock_lets_a_writer_wait_for_readers_and_readers_for_a_writer() -> None:
    lock = RWLock()
    wrote, release, writing, read = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def write() -> None:
        with lock.write():
            wrote.set()

    with lock.read():
        t = threading.Thread(target=write)
        t.start()
        assert not wrote.wait(0.2)  # a search is in progress: the writer waits
    assert wrote.wait(5)
    t.join()

    def long_write() -> None:
        with lock.write():
            writing.set()
            release.wait(5)

    def search() -> None:
        with lock.read():
            read.set()

    threads = [threading.Thread(target=long_write), threading.Thread(target=search)]
    threads[0].start()
    assert writing.wait(5)
    threads[1].start()
    assert not read.wait(0.2)  # a write is in progress: the search waits
    release.set()
    assert read.wait(5)
    for t in threads:
        t.join()
