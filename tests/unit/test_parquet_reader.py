"""data.ingest.read_parquet_v1: the ingest graph reads Parquet through Ray Data's V1 datasource (the
pinned Ray's default V2 provisions 32 FooterReader actors at every execution of a plan), for its
own read only: the process's default is left as it was, also when the read fails."""

from __future__ import annotations

import pytest
import ray.data

from socrates_ray.data import ingest


def test_the_ingest_reads_parquet_through_the_v1_reader_and_leaves_the_default_alone(monkeypatch) -> None:
    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "use_datasource_v2", True)
    seen = []

    def read_parquet(path, **kwargs):
        seen.append((path, kwargs, ray.data.DataContext.get_current().use_datasource_v2))
        if path == "broken":
            raise FileNotFoundError(path)
        return "dataset"

    monkeypatch.setattr(ray.data, "read_parquet", read_parquet)
    assert ingest.read_parquet_v1("split", columns=["prompt", "answer"], num_cpus=0.25) == "dataset"
    assert seen == [("split", {"columns": ["prompt", "answer"], "num_cpus": 0.25}, False)]
    assert context.use_datasource_v2 is True
    with pytest.raises(FileNotFoundError):
        ingest.read_parquet_v1("broken")
    assert seen[-1][2] is False and context.use_datasource_v2 is True
