"""JSON Schemas shipped as package data: spec, golden, results."""
