"""The rules language: loading and validating rules files (file:line errors), its JSON Schema
and expressions, planning which parameter each rule covers, and applying the plan.
"""
