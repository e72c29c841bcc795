"""What a scale-out phase reads back: nginx's access log."""

from __future__ import annotations

from megaclass.loadtest.scaleout.phase import read_access_log


def test_access_log_lists_every_replica_a_request_tried(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        "1795768782.692|55759|502|127.0.0.1:38573|502|0.003\n"
        "1795768784.898|55759|200|127.0.0.1:38573, 127.0.0.1:50977|502, 200|0.005\n"
        "1795768784.899|55759|200|127.0.0.1:50977|200|0.004\n"
    )
    rows = read_access_log(log)
    assert [r[1] for r in rows] == [502, 200, 200]
    assert rows[1][2] == ["127.0.0.1:38573", "127.0.0.1:50977"]
