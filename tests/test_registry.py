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


def test_a_new_parallel_engine_registers_its_probe(flux_pipe, monkeypatch):
    """An engine the runner has never heard of: its probe's refusal comes at apply time, and the split it reports is
    the one the call follows (here a Ulysses degree the tiny model's 2 heads cannot take)."""
    from fresco_plugin.integrations import _context_parallel as parallel

    monkeypatch.setattr(parallel, "_PROBES", list(parallel._PROBES))  # the registration ends with the test

    def toy_engine(transformer):
        degree = getattr(transformer, "_toy_engine_degree", None)
        if degree == "refuse":
            raise ValueError("the toy engine splits the batch; split the sequence instead")
        return None if degree is None else parallel.ContextParallel(ulysses=degree, ring=1, group=None)

    parallel.register_context_parallel_probe("toy engine", toy_engine)
    call = dict(**text_inputs(), height=64, width=64, num_inference_steps=6, output_type="latent",
                generator=torch.Generator().manual_seed(0))
    apply_fresco(flux_pipe, FrescoConfig())
    flux_pipe(**call)  # the toy engine finds no split: an ordinary run
    fresco_plugin.remove_fresco(flux_pipe)

    flux_pipe.transformer._toy_engine_degree = "refuse"
    with pytest.raises(ValueError, match="the toy engine splits the batch"):
        apply_fresco(flux_pipe, FrescoConfig())
    flux_pipe.transformer._toy_engine_degree = 3
    apply_fresco(flux_pipe, FrescoConfig())
    with pytest.raises(ValueError, match="Ulysses degree 3 does not divide"):
        flux_pipe(**call)
    with pytest.raises(ValueError, match="give a callable or 'module:function'"):
        parallel.register_context_parallel_probe("toy engine", "no colon")


def test_a_guidance_rule_replaces_the_cfg_combine():
    """The denoiser merges the two guidance branches with the rule it is built with: the stock formula by default,
    a model's own (Qwen-Image rescales by norms) when given."""
    from types import SimpleNamespace

    from fresco_plugin.integrations._diffusers_runner import TransformerDenoiser
    from fresco_plugin.sampler import Step

    class BranchDenoiser(TransformerDenoiser):
        def forward(self, text, latents, positions, step, rows):
            return torch.full_like(latents, text["value"])

    pipe = SimpleNamespace(transformer=torch.nn.Identity())
    latents, positions = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    step = Step(index=0, stage=0, sigma=torch.tensor(1.0), timestep=torch.tensor(1000.0))
    cond, uncond = {"value": 3.0}, {"value": 1.0}
    stock = BranchDenoiser(pipe, cond, uncond, cfg_scale=2.0)(latents, positions, step)
    assert torch.equal(stock, torch.full_like(latents, 1.0 + 2.0 * (3.0 - 1.0)))

    def rescaled(c, u, scale):
        return (u + scale * (c - u)) * c.norm() / (u + scale * (c - u)).norm() * 0.5

    custom = BranchDenoiser(pipe, cond, uncond, cfg_scale=2.0, combine=rescaled)(latents, positions, step)
    assert torch.allclose(custom, torch.full_like(latents, 1.5))


def test_an_adapter_reads_the_call_by_name_and_a_typo_names_the_pipeline():
    from fresco_plugin.integrations._diffusers_runner import CallArguments

    call = CallArguments("FluxPipeline", {"height": 64, "num_inference_steps": 28}, given={"height"})
    assert call.height == 64 and call.given("height") and not call.given("num_inference_steps")
    with pytest.raises(AttributeError, match="FluxPipeline.__call__ takes no argument 'heigth'"):
        call.heigth  # noqa: B018
