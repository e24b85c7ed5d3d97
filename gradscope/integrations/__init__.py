"""gradscope inside training frameworks, each an optional extra.

* :mod:`gradscope.integrations.lightning`: :class:`~gradscope.integrations.lightning.GradscopeCallback`
  for PyTorch Lightning (``pip install "gradscope[lightning]"``);
* :mod:`gradscope.integrations.hf`: :class:`~gradscope.integrations.hf.GradscopeCallback`
  for the Hugging Face ``Trainer`` (``pip install "gradscope[hf]"``), and the activation
  families of ``transformers.activations`` (``GELUActivation``, ``NewGELUActivation``, ...).

Each callback takes :func:`gradscope.watch`'s options, validated when it is made,
finds the optimizer, the ``GradScaler`` and the TensorBoard run in the framework,
attaches the monitor when training starts and detaches it when training ends.
The modules import their framework, so import the one you use.
"""

__all__: list[str] = []
