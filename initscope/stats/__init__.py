"""Streaming statistics of tensor values: moments, counts, a reproducible sample and structure
lines, on the fused C kernel when it is built and in torch otherwise; histograms.
"""
