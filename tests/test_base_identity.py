"""Base models are identified by content, so a moved work directory still finds the base its versions need."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from fragua.models.identity import base_model_identity, locate_base, same_base
from fragua.models.loading import ModelLoadError


def altered_copy(source, target):
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    return target


def test_a_copy_of_the_base_elsewhere_is_the_same_base_and_other_weights_are_not(tiny_base, tmp_path):
    moved = shutil.copytree(tiny_base, tmp_path / "mounted" / "fragua-tiny")
    identity = base_model_identity(str(tiny_base))
    assert identity.startswith("sha256:") and base_model_identity(str(moved)) == identity
    lineage = {"base_model": "/gone/work/base/fragua-tiny", "base_model_id": identity}
    assert same_base(lineage, str(moved))
    assert locate_base(lineage, str(moved)) == str(moved)

    other = altered_copy(tiny_base, tmp_path / "other" / "fragua-tiny")
    assert not same_base(lineage, str(other))
    with pytest.raises(ModelLoadError, match=r"no longer at /gone/work/base/fragua-tiny.*set train.base_model to a copy of it"):
        locate_base(lineage, str(other))
    assert base_model_identity("acme/some-model").startswith("hub:acme/some-model@")


def test_lineages_without_an_identity_fall_back_to_the_path_then_the_folder_name(tiny_base, tmp_path):
    moved = shutil.copytree(tiny_base, tmp_path / "moved" / "fragua-tiny")
    other = altered_copy(tiny_base, tmp_path / "other" / "fragua-tiny")
    # The recorded path still exists: its content decides.
    assert same_base({"base_model": str(tiny_base)}, str(moved))
    assert not same_base({"base_model": str(tiny_base)}, str(other))
    assert locate_base({"base_model": str(tiny_base)}, str(other)) == str(tiny_base)
    # The recorded path is gone: a folder of the same name is taken for it.
    gone = {"base_model": str(tmp_path / "old-work" / "base" / "fragua-tiny")}
    assert same_base(gone, str(moved)) and locate_base(gone, str(moved)) == str(moved)
    assert not same_base({"base_model": str(tmp_path / "old" / "llama-7b")}, str(moved))
    assert locate_base({}, str(moved)) is None


def test_a_missing_base_folder_is_named_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        base_model_identity(str(tmp_path / "nowhere" / "fragua-tiny"))
