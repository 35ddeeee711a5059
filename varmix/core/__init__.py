"""The bottom layer: names, params.yaml's schema and checks, errors, atomic file writes. No torch."""
