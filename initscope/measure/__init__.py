"""The one measurement pipeline: every tensor of a TARGET read once, its statistics, sample and
(when asked) values handed to report, check and diff.
"""
