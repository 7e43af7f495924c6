"""The batched EM engine, one module per step (as scikit-learn's ``mixture/_base.py``).

- :mod:`~napari_gmmseg.em.init`: seeded initial parameters (k-means++, random, ...);
- :mod:`~napari_gmmseg.em.estep`: the E-step tile kernel (log joint, NLL, statistics);
- :mod:`~napari_gmmseg.em.mstep`: the M-step from sufficient statistics, with the floor;
- :mod:`~napari_gmmseg.em.spatial`: the spatial prior (Potts MRF term, Pi smoothing);
- :mod:`~napari_gmmseg.em.restarts`: restarts as a wrapper around the driver;
- :mod:`~napari_gmmseg.em.driver`: setup and the loop over iterations;
- :mod:`~napari_gmmseg.em.result`: :class:`MixtureResult`.

The public entry points are :func:`napari_gmmseg.mixture.fit_gmm` and
:func:`~napari_gmmseg.mixture.fit_svgmm`.
"""
