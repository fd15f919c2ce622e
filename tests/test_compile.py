"""torch.compile with Fresco: token counts change at every stage switch and promotion round, yet recompiles stay
bounded, because dynamo marks the sequence dimension dynamic after its first change (or from the start with
``dynamic=True``). Compiles are counted with dynamo's counting backend (tracing only, no code generation)."""

import pytest
import torch
from conftest import text_inputs
from torch._dynamo.testing import CompileCounter

from fresco_plugin import FrescoConfig, apply_fresco
from fresco_plugin.tools.tiny import tiny_flux_pipeline

CONFIG = FrescoConfig(stage_scales=(0.25, 0.5, 1.0), promotion_rounds=1)  # 5 token counts per generation
BLOCK_CLASSES = 2  # FluxTransformerBlock and FluxSingleTransformerBlock


def _generate(pipe, batch=1):
    return pipe(**text_inputs(batch=batch), height=64, width=64, num_inference_steps=12, output_type="latent",
                generator=[torch.Generator().manual_seed(s) for s in range(batch)]).images


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("dynamic,first_generation", [(None, 2 * BLOCK_CLASSES), (True, BLOCK_CLASSES)])
def test_compile_repeated_blocks_compiles_a_bounded_number_of_times(dynamic, first_generation):
    reference_pipe = tiny_flux_pipeline()
    reference_pipe.set_progress_bar_config(disable=True)
    apply_fresco(reference_pipe, CONFIG)
    reference = _generate(reference_pipe)

    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    counter = CompileCounter()
    pipe.transformer.compile_repeated_blocks(backend=counter, dynamic=dynamic, fullgraph=True)
    apply_fresco(pipe, CONFIG)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["hidden_states"].shape[1]),
                                               with_kwargs=True)
    compiled = _generate(pipe)
    per_generation = [counter.frame_count]
    for _ in range(2):
        _generate(pipe)
        per_generation.append(counter.frame_count - sum(per_generation))
    assert len(set(seen)) == 5  # five token counts in one generation ...
    assert per_generation == [first_generation, 0, 0]  # ... compiled at most twice per block class, then never
    assert torch.allclose(compiled, reference, atol=1e-5)


def test_split_batches_add_one_recompile_per_block_class():
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    counter = CompileCounter()
    pipe.transformer.compile_repeated_blocks(backend=counter, dynamic=True, fullgraph=True)
    apply_fresco(pipe, CONFIG)
    _generate(pipe, batch=1)
    single = counter.frame_count
    _generate(pipe, batch=2)  # images with different layouts run one forward each: batch 2 and batch 1
    _generate(pipe, batch=2)
    assert counter.frame_count - single <= BLOCK_CLASSES


def test_whole_transformer_compile_works_too():
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    counter = CompileCounter()
    pipe.transformer = torch.compile(pipe.transformer, backend=counter, dynamic=True)
    apply_fresco(pipe, CONFIG)
    _generate(pipe)
    _generate(pipe)
    assert counter.frame_count == 1
