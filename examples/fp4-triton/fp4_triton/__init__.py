"""fp4-triton: an fp4core backend written in Triton (example third-party plugin).

The backend registers itself through the ``fp4core.backends`` entry point (see
``pyproject.toml``); importing this package does not import Triton.
"""

__version__ = "0.1.1"
