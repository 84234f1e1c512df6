"""Backends run a stack of interventions on a model; the only modules importing nnsight or TransformerLens.

Import them explicitly (`sinklens.backends.nnsight_backend`) or through
`sinklens.NnsightRunner`; `import sinklens` alone imports neither library.
"""
