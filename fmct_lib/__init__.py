"""fmct: a clean-room, tested reproduction of the FM-CT 3D head-CT foundation model.

Zhu et al., "3D foundation model for generalizable disease detection in head computed tomography",
Nature Biomedical Engineering 2026 (arXiv 2502.02779).
"""
__version__ = "0.1.0"
