"""Reference experiments on MNIST: activations × initialisation × BatchNorm.

* :mod:`~gradscope.experiments.data`: MNIST via torchvision or the PyPI fallback, md5-verified;
* :mod:`~gradscope.experiments.models`: MLPs with activation/init/BatchNorm by name;
* :mod:`~gradscope.experiments.train`: one run under :func:`gradscope.watch`;
* :mod:`~gradscope.experiments.grid`: validated, resumable grids and their summary;
* :mod:`~gradscope.experiments.presets`: classic results with computed verdicts;
* :mod:`~gradscope.experiments.plots`: comparison PNGs;
* :mod:`~gradscope.experiments.compare`: the ``gradscope compare``/``preset`` commands.
"""
