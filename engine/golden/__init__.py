"""Goldens: the one lifecycle every kind's golden goes through (`golden.store`)."""
