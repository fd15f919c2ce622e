"""What is built on the integrations (installed as ``fresco_plugin.tools``): the ``fresco`` command line, the
benchmark, the demo, the shipped scenes model and its data, the realism encoder, and the random-weight pipelines the
tests, offline examples and GPU timings use.

Core (``fresco_plugin``) <- integrations (``fresco_plugin.integrations``) <- tools: nothing below imports from here.
"""
