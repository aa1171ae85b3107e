"""The spec kinds, one package each (causal_lm, embedding, ops), over `base` — the one
record/check skeleton (a template method over a CheckRequest / RecordRequest that opens
the reference and the candidate, checks each case and closes both) — and `policy`, what
every case loop shares (case selection, the time limit, the per-case error policy). A
kind is a `base.Kind` with small hooks: open its reference, open its candidate, check one
case, record one case, its golden codec. The kinds never import each other;
`specengine.run` holds the kind table."""
