"""Evaluating trained models: corruptions, calibration, local linearity, perturbations, sample distances."""
