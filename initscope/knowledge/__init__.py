"""What torch (or a model's own code) does at initialization, and what values follow: traced
default inits, distribution families, identification of the family values follow, goodness-
of-fit tests, and explanations of layer types.
"""
