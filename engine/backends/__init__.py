"""Backends: one module per runtime, behind the interface in `base`.

Nothing here imports a runtime at package import; `registry.create` imports the module
of the backend it is asked for.
"""
