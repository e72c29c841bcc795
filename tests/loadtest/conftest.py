"""Shared pieces of the load-test tests: the files Locust writes, for a run with a few failures."""

from __future__ import annotations

from pathlib import Path

STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,"
    "Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,"
    "Total Min Response Time,Total Max Response Time,Total Average Content Size"
)


def fake_locust_run(prefix: Path) -> None:
    """The three CSVs Locust writes, for a run with a few failures."""
    Path(f"{prefix}_stats.csv").write_text(
        STATS_HEADER + "\n"
        "grpc,classify b=1,900,0,10,11.5,2,80,300,90.0,0.0,10,12,13,14,20,30,50,70,80,80,80\n"
        "grpc,classify b=4,100,3,20,22.0,5,90,900,10.0,0.3,20,22,23,24,30,40,60,80,90,90,90\n"
        ",Aggregated,1000,3,11,12.5,2,90,360,100.0,0.3,11,13,14,15,21,32,55,75,90,90,90\n"
    )
    rows = [HISTORY_HEADER]
    for t in range(5):
        rows.append(
            f"{1000 + t},4,,Aggregated,{90 + t},{0.1 * t},10,11,12,13,14,15,16,17,18,19,20,{t * 100},{t},10,11,2,20,300"
        )
    rows.append("1002,4,grpc,classify b=1,80,0,10,11,12,13,14,15,16,17,18,19,20,150,0,10,11,2,20,300")
    Path(f"{prefix}_stats_history.csv").write_text("\n".join(rows) + "\n")
    Path(f"{prefix}_failures.csv").write_text(
        "Method,Name,Error,Occurrences\ngrpc,classify b=4,\"InferenceServerException('queue full')\",3\n"
    )
