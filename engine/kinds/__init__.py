"""The spec kinds, one package each (causal_lm, embedding, ops), and `base`: what they all
share (case selection, the time limit, the per-case error policy, the record/check
skeletons). The kinds never import each other; `specengine.run` holds the kind table."""
