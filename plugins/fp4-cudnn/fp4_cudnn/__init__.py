"""fp4-cudnn: the ``cudnn`` backend of fp4core.

Installed, it registers through the ``fp4core.backends`` entry point
(``cudnn = "fp4_cudnn.plugin:CudnnBackend"``); nothing needs importing by hand. Importing this
package needs neither a GPU, nor libcudnn, nor Triton: they are loaded on first use.
"""

__version__ = "0.1.1"
