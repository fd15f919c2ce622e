"""The scenes model's grammar pre-training labels (training/train_scenes_model.py): a wrong label would silently cost
a 90-minute retrain, so the place-named slots are checked against where the renderer puts each object."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fresco_plugin.tools.scenes import COLORS, SHAPES, sample_scene

_SCRIPT = Path(__file__).resolve().parents[1] / "training" / "train_scenes_model.py"


@pytest.fixture(scope="module")
def training():
    spec = importlib.util.spec_from_file_location("train_scenes_model", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scenes(count, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(count)]


def test_place_named_slot_one_is_the_object_on_the_left_or_on_top(training):
    for scene in _scenes(80):
        labels = training.slot_labels(scene.prompt, spatial=True)
        color_1, shape_1, color_2, shape_2 = labels[0], labels[1], labels[3], labels[4]
        objects = {(list(COLORS).index(o.color), SHAPES.index(o.shape)): o for o in (scene.first, scene.second)}
        leading, trailing = objects[(color_1, shape_1)], objects[(color_2, shape_2)]
        axis = 0 if "of" in scene.relation else 1  # x for left/right, y (down) for above/below
        assert leading.center[axis] < trailing.center[axis], (scene.prompt, leading, trailing)


def test_word_order_slots_are_the_shipped_labels(training):
    for scene in _scenes(40, seed=1):
        labels = training.slot_labels(scene.prompt)
        assert list(COLORS)[labels[0]] == scene.first.color and SHAPES[labels[1]] == scene.first.shape
        assert list(COLORS)[labels[3]] == scene.second.color and SHAPES[labels[4]] == scene.second.shape
        if scene.relation in ("above", "left of"):  # the first-named object leads: both namings agree
            assert training.slot_labels(scene.prompt, spatial=True) == labels


def test_each_token_names_the_slot_its_object_fills(training):
    _, t5 = training.build_tokenizers()
    offsets = np.cumsum([0] + [len(choices) for _, choices in training.SLOTS])
    names = [name for name, _ in training.SLOTS]
    for spatial in (False, True):
        for scene in _scenes(30, seed=2):
            labels = training.slot_labels(scene.prompt, spatial=spatial)
            roles = [r for r in training.word_roles(scene.prompt, t5, spatial=spatial) if r != -100]
            expected = {int(offsets[k]) + label for k, label in enumerate(labels)}
            assert set(roles) == expected, (scene.prompt, spatial)
            color_slot = next(names[k] for k in range(len(names)) if offsets[k] <= roles[0] < offsets[k + 1])
            first_leads = not spatial or scene.relation in ("above", "left of")
            assert color_slot == ("color_1" if first_leads else "color_2"), (scene.prompt, spatial)
