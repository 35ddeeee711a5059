"""Training: data, models, the mixers (VarMixup among them), attacks, the VAE and its gate, the trainer."""
