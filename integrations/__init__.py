"""Adapters from Fresco's core to the libraries people run (installed as ``fresco_plugin.integrations``).

One module per library. The pipeline adapters are declared as ``fresco_plugin.adapters`` entry points in
``pyproject.toml``, so importing this package (or the core) imports no third-party library; an adapter's module, and
diffusers with it, is imported the first time such a pipeline gets Fresco.
"""
