"""What a run shows: callbacks (progress, curves, images, the step axis), TensorBoard HPARAMS, figures."""
