"""Third parties extend Fresco by registering names; nothing in the package needs editing."""

import pytest
import torch
from conftest import text_inputs

import fresco_plugin
from fresco_plugin import FrescoConfig, apply_fresco, register_adapter, register_score, register_strategy
from fresco_plugin.transitions import FrescoRule


def test_core_import_pulls_in_no_pipeline_library():
    import subprocess
    import sys

    code = ("import sys, fresco_plugin; fresco_plugin.adapters(); fresco_plugin.strategies(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_custom_strategy_and_score_run_through_the_pipeline(flux_pipe):
    calls = {"rule": 0, "score": 0}

    class CountingRule(FrescoRule):
        def __call__(self, transition):
            calls["rule"] += 1
            return super().__call__(transition)

    def corner_first(history):
        calls["score"] += 1
        latest = history[-1].denoised
        return torch.arange(latest.shape[1], dtype=torch.float32).expand(latest.shape[0], -1)

    register_strategy("counting-fresco", CountingRule, replace=True)
    register_score("corner-first", corner_first, min_history=1, replace=True)
    assert "counting-fresco" in fresco_plugin.strategies() and "corner-first" in fresco_plugin.scores()
    apply_fresco(flux_pipe, FrescoConfig(strategy="counting-fresco", score="corner-first"))
    flux_pipe(**text_inputs(), height=64, width=64, num_inference_steps=6, output_type="latent")
    assert calls == {"rule": 2, "score": 1}  # one round and one stage switch; one scored round


def test_names_cannot_be_taken_twice_by_accident():
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_strategy("fresco", FrescoRule)


def test_a_custom_adapter_is_found_by_class():
    class MyPipeline:
        pass

    class MySubclassedPipeline(MyPipeline):
        pass

    class Runner:  # a FrescoRunner
        last_run = None

        def __init__(self, pipe, config):
            self.config = config
            self.closed_with = None

        def __call__(self, *args, **kwargs):
            return "fresco ran"

        def close(self, fresco_class):
            self.closed_with = fresco_class

    register_adapter("MyPipeline", Runner, replace=True)
    pipe = MySubclassedPipeline()
    apply_fresco(pipe, FrescoConfig())
    assert pipe() == "fresco ran"
    assert isinstance(pipe, MySubclassedPipeline) and type(pipe) is not MySubclassedPipeline
    fresco_class, runner = type(pipe), pipe._fresco_runner
    fresco_plugin.remove_fresco(pipe)
    assert type(pipe) is MySubclassedPipeline and runner.closed_with is fresco_class
