"""jaxflow_ad: visual anomaly detection with normalizing flows and frequency-domain methods.

Sub-packages (arrows point down only):
  flows/      invertible layers with forward/inverse -> (y, logdet)
  spectral/   pure jax.numpy.fft functions
  nn/         non-invertible building blocks
  backbones/  pretrained feature extractors (parameters from converted torch checkpoints)
  models/     one file per method, registered in models.REGISTRY
  data/       dataset layouts, built-in synthetic dataset, augmentation, anomaly synthesis
  metrics/    host-side NumPy metrics (AUROC, AUPRO, AP, F1-max)
  engine/     training loop, mesh, checkpoints, writers, reports
"""

__version__ = "0.1.0"
