"""nerpipe_model.json (nerpipe/model/description.py): what data/model says about itself, byte-stable, and the
messages for a model directory that cannot say it."""

import json

import pytest

import nerpipe
from nerpipe.core.errors import UserError
from nerpipe.core.params import PrepareParams, TrainParams
from nerpipe.model.description import describe_trained, read_description, usage_settings
from nerpipe.model.loading import load_for_training
from nerpipe.model.methods import prepare_for_training, save_trained
from tests.conftest import CONLL_LABELS


def exported(model, directory, prepared):
    """What the train stage writes: save_trained during training, then the description at export."""
    save_trained(model, directory)
    describe_trained(directory, prepared, PrepareParams(max_length=24, window_overlap=4, context=0), "auto")
    return directory


def test_an_exported_model_describes_itself_in_the_same_bytes_every_time(tiny_model_dir, prepared, tmp_path):
    cfg = TrainParams(method="lora")
    model = prepare_for_training(load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.0, 0), cfg, 24)
    first = exported(model, tmp_path / "first", prepared)
    second = exported(model, tmp_path / "second", prepared)
    text = (first / "nerpipe_model.json").read_text()
    assert text == (second / "nerpipe_model.json").read_text()
    assert str(tmp_path) not in text and str(prepared) not in text  # no paths of this machine
    assert json.loads(text) == {
        "nerpipe_version": nerpipe.__version__, "labels": CONLL_LABELS, "tag_scheme": "IOB2",
        "max_length": 24, "window_overlap": 4, "context": 0, "bf16": "auto",
        "method": {"method": "lora", "merged": True, "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "auto"},
        "data_sha256": None}  # the `prepared` fixture has no download record; the pipeline's does (e2e tests)
    assert usage_settings(first) == {"max_length": 24, "window_overlap": 4, "context": 0, "bf16": "auto"}


def test_a_directory_that_cannot_say_how_to_use_it_is_told_what_to_do(tiny_model_dir, tmp_path):
    assert read_description(tiny_model_dir) is None  # a plain save_pretrained model
    with pytest.raises(UserError, match="no nerpipe_model.json, so its window, context and precision settings are "
                                        r"unknown; re-run the train stage \(`dvc repro -f train`\) to write it"):
        usage_settings(tiny_model_dir)
    save_trained(load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.0, 0), tmp_path / "best")
    with pytest.raises(UserError, match="holds only the method"):  # a checkpoint's best/, not data/model
        usage_settings(tmp_path / "best")
    (tmp_path / "best" / "nerpipe_model.json").write_text("{not json")
    with pytest.raises(UserError, match="not a nerpipe model description"):
        read_description(tmp_path / "best")
