"""Training that streams its train split from S3 (moto server) instead of downloading the dataset version."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fragua.jobs.data import ingest_sources
from fragua.jobs.train import train_model

from .conftest import EXAMPLES, make_settings

TRAIN = {"epochs": 2, "batch_size": 8, "logging_steps": 1, "save_steps": 4}


@pytest.mark.slow
def test_streamed_training_reads_s3_without_a_local_copy_and_counts_like_the_whole_split(tmp_path, s3_settings):
    data = {"sources": [{"path": str(EXAMPLES / "batch1")}], "store": "registry"}
    writer = make_settings(tmp_path / "ingesting-machine", data=data, registry=s3_settings)
    dataset = ingest_sources(writer)

    streaming = make_settings(tmp_path / "training-machine", data=data, registry=s3_settings, train={**TRAIN, "stream_data": True})
    streamed = train_model(streaming, dataset.id)
    assert streamed.streamed_from == f"s3://{s3_settings.bucket}/team/registry/datasets/{dataset.id}/train.parquet"
    assert not (streaming.work_path / "cache" / "datasets" / dataset.id).exists(), "the version was downloaded"

    whole = make_settings(tmp_path / "reading-whole", data=data, registry=s3_settings, train=TRAIN)
    read_whole = train_model(whole, dataset.id)
    assert read_whole.streamed_from is None
    for field in ("examples", "truncated", "dropped", "trained_tokens", "max_steps", "global_step"):
        assert getattr(streamed, field) == getattr(read_whole, field), field
    assert streamed.examples == dataset.counts["train"] and streamed.global_step == streamed.max_steps > 0
    assert streamed.eval_loss is not None and streamed.train_loss is not None
    losses = [entry["loss"] for entry in streamed.log_history if "loss" in entry]
    assert len(losses) == streamed.global_step and sum(losses[-3:]) < sum(losses[:3])


def test_stream_data_needs_the_registry_bucket(tmp_path):
    with pytest.raises(ValidationError, match="train.stream_data reads the train split"):
        make_settings(tmp_path, train={"stream_data": True})
