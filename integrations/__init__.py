"""Adapters from Fresco's core to the libraries people run (installed as ``fresco_plugin.integrations``).

Registration is by class name with lazy ``module:attribute`` strings, so importing this package imports no
third-party library; the adapter's module (and diffusers) is imported the first time such a pipeline gets Fresco.
"""

from fresco_plugin.registry import register_adapter

register_adapter("FluxPipeline", "fresco_plugin.integrations.diffusers_flux:FluxFrescoRunner")
register_adapter("HunyuanVideoPipeline", "fresco_plugin.integrations.diffusers_hunyuan_video:HunyuanVideoFrescoRunner")
register_adapter("WanPipeline", "fresco_plugin.integrations.diffusers_wan:WanFrescoRunner")
# xDiT's own (PipeFusion-capable) pipelines fix the token layout per call: refused, naming the runner path
register_adapter("xFuserPipelineBaseWrapper", "fresco_plugin.integrations.xdit:refuse_xdit_pipeline")
