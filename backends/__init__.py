"""Backends: one module per runtime, behind the interface in `base`.

This folder sits beside engine/ at the top of the repository and installs as the
subpackage `specengine.backends` (pyproject maps it, as it maps schemas/); every import
names it that way.

Nothing here imports a runtime at package import; `registry.create` imports the module
of the backend it is asked for.
"""
