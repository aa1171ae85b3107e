"""Loading what a spec names: model sources (folders, GGUF conversions, synthetic models
with portable seeded weights; fingerprints and provenance), tokenizers, and the one
Session (a backend from the registry, loaded with its model, for one spec)."""
